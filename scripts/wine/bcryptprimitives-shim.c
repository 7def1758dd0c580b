/*
 * TEST-ENVIRONMENT SHIM — never shipped, never part of dpskit.
 *
 * Programs built by current Rust for x86_64-pc-windows-gnu import ProcessPrng from
 * bcryptprimitives.dll (Windows 10+). Debian 12's Wine 8.0 lacks that export, so the test
 * executables would not even load under Wine (status c0000135, exit 53, no output).
 * scripts/test-windows.sh builds this file into a bcryptprimitives.dll inside the throw-away
 * Wine prefix only; real Windows has the real DLL.
 */
#include <windows.h>

/* RtlGenRandom, exported by advapi32 as SystemFunction036. */
BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
