"""Microsoft's Python device SDK (azure-iot-device) against `dpskit emulate`.

Provisions through DPS with a derived key, connects to the assigned hub, sends telemetry with
properties, then waits for one cloud-to-device message and answers one direct method. Prints a
line per step for the Rust test to check. The SDK only ever connects to port 8883.

usage: azure_sdk_device.py ID_SCOPE REGISTRATION_ID DEVICE_KEY CA_PEM
"""
import json
import sys
import threading

from azure.iot.device import IoTHubDeviceClient, Message, MethodResponse, ProvisioningDeviceClient


def main():
    scope, reg_id, key, ca_path = sys.argv[1:5]
    ca = open(ca_path).read()
    prov = ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host="localhost",
        registration_id=reg_id,
        id_scope=scope,
        symmetric_key=key,
        server_verification_cert=ca,
    )
    result = prov.register()
    state = result.registration_state
    print(f"registered status={result.status} hub={state.assigned_hub} device={state.device_id}", flush=True)
    if result.status != "assigned":
        sys.exit(1)

    client = IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=key,
        hostname=state.assigned_hub,
        device_id=state.device_id,
        server_verification_cert=ca,
    )
    got_c2d = threading.Event()
    got_method = threading.Event()

    def on_message(msg):
        print(f"c2d body={msg.data.decode()} props={json.dumps(msg.custom_properties, sort_keys=True)}", flush=True)
        got_c2d.set()

    def on_method(request):
        client.send_method_response(MethodResponse.create_from_method_request(request, 200, request.payload))
        print(f"method name={request.name} payload={json.dumps(request.payload)}", flush=True)
        got_method.set()

    client.on_message_received = on_message
    client.on_method_request_received = on_method
    client.connect()
    msg = Message(json.dumps({"temperature": 21.5}))
    msg.content_type = "application/json"
    msg.content_encoding = "utf-8"
    msg.custom_properties["level"] = "warn ing"
    client.send_message(msg)
    client.patch_twin_reported_properties({"firmwareVersion": "python-sdk"})
    print("telemetry sent", flush=True)
    ok = got_c2d.wait(30) and got_method.wait(30)
    client.shutdown()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
