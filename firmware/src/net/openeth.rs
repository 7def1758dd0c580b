//! An embassy-net driver for the OpenCores 10/100 Ethernet MAC that Espressif's QEMU gives the
//! ESP32-C3 (`-nic user,model=open_eth`); ESP-IDF's `esp_eth_mac_openeth.c` drives the same
//! model. It exists so the firmware can run end to end in an emulator, which has no Wi-Fi:
//! there is no such MAC on a real chip.
//!
//! Polled: a 2 ms task wakes the stack, which then checks the receive descriptors. The same
//! timer keeps QEMU's main loop awake, which user-mode networking needs to move host-side
//! socket data promptly.
//!
//! Model facts the driver relies on (checked against the emulator): descriptors live in the
//! MAC's register window; a TX descriptor written with READY sends the frame during that
//! write; the RX index restarts at `TX_BD_NUM` when RXEN is set; received lengths include
//! four FCS bytes.

use core::ptr::{addr_of_mut, read_volatile, write_volatile};
use core::sync::atomic::{compiler_fence, Ordering};
use core::task::Context;
use embassy_net_driver::{Capabilities, HardwareAddress, LinkState};
use embassy_sync::waitqueue::AtomicWaker;
use embassy_time::{Duration, Ticker};

const BASE: usize = 0x600C_D000;
const MODER: usize = 0x00;
const INT_SOURCE: usize = 0x04;
const INT_MASK: usize = 0x08;
const TX_BD_NUM: usize = 0x20;
const MAC_ADDR0: usize = 0x40;
const MAC_ADDR1: usize = 0x44;
const DESCRIPTORS: usize = 0x400;

const MODER_RXEN: u32 = 1 << 0;
const MODER_TXEN: u32 = 1 << 1;
const MODER_FULLD: u32 = 1 << 10;
const MODER_CRCEN: u32 = 1 << 13;
const MODER_PAD: u32 = 1 << 15;

const TX_READY: u32 = 0x8000;
const TX_WRAP: u32 = 0x2000;
const TX_PAD: u32 = 0x1000;
const TX_CRC: u32 = 0x0800;
const RX_EMPTY: u32 = 0x8000;
const RX_WRAP: u32 = 0x2000;

/// One TX descriptor is enough: the model sends synchronously.
const TX_COUNT: usize = 1;
const RX_COUNT: usize = 8;
const BUF: usize = 1536;
const FCS: usize = 4;
const MTU: usize = 1514;

#[repr(C, align(4))]
struct Buffers {
    tx: [u8; BUF],
    rx: [[u8; BUF]; RX_COUNT],
}

static mut BUFFERS: Buffers = Buffers {
    tx: [0; BUF],
    rx: [[0; BUF]; RX_COUNT],
};

static WAKER: AtomicWaker = AtomicWaker::new();

fn reg(offset: usize) -> *mut u32 {
    (BASE + offset) as *mut u32
}

fn read(offset: usize) -> u32 {
    // SAFETY: an aligned register of the emulated MAC; only this driver touches it.
    unsafe { read_volatile(reg(offset)) }
}

fn write(offset: usize, value: u32) {
    // SAFETY: as in `read`.
    unsafe { write_volatile(reg(offset), value) }
}

fn descriptor(index: usize) -> usize {
    DESCRIPTORS + 8 * index
}

/// The OpenCores MAC as an embassy-net device.
pub struct OpenEth {
    mac: [u8; 6],
    /// Next RX descriptor to look at, 0..RX_COUNT.
    rx_next: usize,
}

impl OpenEth {
    /// Sets the MAC up (descriptors before RXEN, as the model requires). Call once.
    pub fn new(mac: [u8; 6]) -> Self {
        write(MODER, 0);
        write(INT_MASK, 0);
        write(INT_SOURCE, 0xffff_ffff);
        write(TX_BD_NUM, TX_COUNT as u32);
        write(
            MAC_ADDR0,
            u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]),
        );
        write(MAC_ADDR1, (u32::from(mac[0]) << 8) | u32::from(mac[1]));
        // SAFETY: the buffers are handed to the MAC here, once; afterwards only this driver
        // reads or writes them, between the descriptor handshakes.
        let bufs = unsafe { &mut *addr_of_mut!(BUFFERS) };
        write(descriptor(0) + 4, bufs.tx.as_ptr() as u32);
        write(descriptor(0), TX_WRAP);
        for (i, rx) in bufs.rx.iter().enumerate() {
            let wrap = if i == RX_COUNT - 1 { RX_WRAP } else { 0 };
            write(descriptor(TX_COUNT + i) + 4, rx.as_ptr() as u32);
            write(descriptor(TX_COUNT + i), RX_EMPTY | wrap);
        }
        compiler_fence(Ordering::SeqCst);
        write(
            MODER,
            MODER_RXEN | MODER_TXEN | MODER_FULLD | MODER_CRCEN | MODER_PAD,
        );
        OpenEth { mac, rx_next: 0 }
    }

    fn rx_word(&self) -> u32 {
        read(descriptor(TX_COUNT + self.rx_next))
    }

    /// Gives the current RX descriptor back to the MAC and moves on.
    fn release_rx(&mut self) {
        let wrap = if self.rx_next == RX_COUNT - 1 {
            RX_WRAP
        } else {
            0
        };
        compiler_fence(Ordering::SeqCst);
        write(descriptor(TX_COUNT + self.rx_next), RX_EMPTY | wrap);
        self.rx_next = (self.rx_next + 1) % RX_COUNT;
        // Clear "busy" (a frame dropped while all descriptors were full): nothing to do
        // about it but make room, which this did.
        write(INT_SOURCE, read(INT_SOURCE));
    }
}

pub struct Rx<'a> {
    eth: &'a mut OpenEth,
}

pub struct Tx;

impl embassy_net_driver::RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, f: F) -> R {
        let word = self.eth.rx_word();
        let len = ((word >> 16) as usize).saturating_sub(FCS).min(BUF);
        compiler_fence(Ordering::SeqCst);
        // SAFETY: the MAC has handed this descriptor's buffer back (EMPTY clear) and does
        // not touch it until `release_rx`.
        let buf = unsafe { &mut (&mut (*addr_of_mut!(BUFFERS)).rx)[self.eth.rx_next][..len] };
        let r = f(buf);
        self.eth.release_rx();
        r
    }
}

impl embassy_net_driver::TxToken for Tx {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let len = len.min(BUF);
        // SAFETY: the model sends synchronously, so the TX buffer is free whenever the
        // stack asks for a token.
        let buf = unsafe { &mut (&mut (*addr_of_mut!(BUFFERS)).tx)[..len] };
        let r = f(buf);
        compiler_fence(Ordering::SeqCst);
        write(
            descriptor(0),
            ((len as u32) << 16) | TX_READY | TX_WRAP | TX_PAD | TX_CRC,
        );
        r
    }
}

impl embassy_net_driver::Driver for OpenEth {
    type RxToken<'a> = Rx<'a>;
    type TxToken<'a> = Tx;

    fn receive(&mut self, cx: &mut Context) -> Option<(Rx<'_>, Tx)> {
        loop {
            let word = self.rx_word();
            if word & RX_EMPTY != 0 {
                WAKER.register(cx.waker());
                return None;
            }
            // The model reports no receive errors (ESP-IDF's driver relies on that too); a
            // frame shorter than its FCS would be one.
            if (word >> 16) as usize <= FCS {
                self.release_rx();
                continue;
            }
            return Some((Rx { eth: self }, Tx));
        }
    }

    fn transmit(&mut self, _cx: &mut Context) -> Option<Tx> {
        Some(Tx)
    }

    fn link_state(&mut self, _cx: &mut Context) -> LinkState {
        LinkState::Up
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::default();
        caps.max_transmission_unit = MTU;
        caps.max_burst_size = Some(1);
        caps
    }

    fn hardware_address(&self) -> HardwareAddress {
        HardwareAddress::Ethernet(self.mac)
    }
}

/// Wakes the stack every 2 ms to look for received frames.
#[embassy_executor::task]
pub async fn poll_task() {
    let mut ticker = Ticker::every(Duration::from_millis(2));
    loop {
        ticker.next().await;
        WAKER.wake();
    }
}

#[embassy_executor::task]
pub async fn net_task(mut runner: embassy_net::Runner<'static, OpenEth>) {
    runner.run().await
}
