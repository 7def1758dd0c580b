//! The C library's formatted output, for builds without Wi-Fi (the QEMU build): mbedTLS calls
//! `snprintf`, `vsnprintf`, `printf` and `puts` (certificate descriptions, debug checks). In
//! Wi-Fi builds the radio's C libraries bring them; without Wi-Fi nothing does, and
//! tinyrlibc's version needs a hosted C compiler. So: a small `vsnprintf` in Rust, and the
//! two variadic entry points as RISC-V trampolines that do what a variadic C function's
//! prologue does — spill the argument registers next to the caller's stack arguments and
//! pass a pointer to them as the `va_list` (RISC-V ilp32: a `va_list` is that pointer;
//! 64-bit arguments are 8-byte aligned in it).

use core::ffi::{c_char, c_int};
use core::fmt::Write;

core::arch::global_asm!(
    ".section .text.snprintf,\"ax\",@progbits",
    ".globl snprintf",
    ".type snprintf,@function",
    "snprintf:",
    // a0 = buf, a1 = size, a2 = format, a3..a7 = the first variadic arguments.
    "addi sp, sp, -48",
    "sw ra, 0(sp)",
    "sw a3, 28(sp)",
    "sw a4, 32(sp)",
    "sw a5, 36(sp)",
    "sw a6, 40(sp)",
    "sw a7, 44(sp)",
    "addi a3, sp, 28",
    "call vsnprintf",
    "lw ra, 0(sp)",
    "addi sp, sp, 48",
    "ret",
    ".size snprintf, .-snprintf",
    "",
    ".section .text.printf,\"ax\",@progbits",
    ".globl printf",
    ".type printf,@function",
    "printf:",
    // a0 = format, a1..a7 = the first variadic arguments.
    "addi sp, sp, -48",
    "sw ra, 0(sp)",
    "sw a1, 20(sp)",
    "sw a2, 24(sp)",
    "sw a3, 28(sp)",
    "sw a4, 32(sp)",
    "sw a5, 36(sp)",
    "sw a6, 40(sp)",
    "sw a7, 44(sp)",
    "addi a1, sp, 20",
    "call dpskit_vprintf",
    "lw ra, 0(sp)",
    "addi sp, sp, 48",
    "ret",
    ".size printf, .-printf",
);

/// Walks a RISC-V ilp32 `va_list`.
struct Args(*const u8);

impl Args {
    unsafe fn u32(&mut self) -> u32 {
        // SAFETY: the caller's format promises a 32-bit argument here.
        let v = unsafe { self.0.cast::<u32>().read_unaligned() };
        self.0 = self.0.wrapping_add(4);
        v
    }

    unsafe fn u64(&mut self) -> u64 {
        let aligned = (self.0 as usize + 7) & !7;
        // SAFETY: the caller's format promises a 64-bit argument here, 8-byte aligned.
        let v = unsafe { (aligned as *const u64).read() };
        self.0 = (aligned + 8) as *const u8;
        v
    }
}

/// A `core::fmt::Write` into a C buffer that counts what would have been written.
struct Out {
    buf: *mut u8,
    cap: usize,
    len: usize,
}

impl Write for Out {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &b in s.as_bytes() {
            if self.len + 1 < self.cap {
                // SAFETY: within the caller's buffer, leaving room for the NUL.
                unsafe { self.buf.add(self.len).write(b) };
            }
            self.len += 1;
        }
        Ok(())
    }
}

unsafe fn c_str<'a>(p: *const u8) -> &'a [u8] {
    if p.is_null() {
        return b"(null)";
    }
    // SAFETY: a NUL-terminated C string, as the format promised.
    unsafe { core::ffi::CStr::from_ptr(p.cast()).to_bytes() }
}

/// Formats `fmt` with the arguments at `ap`: `%d %i %u %x %X %o %c %s %p %%`, flags `-0`,
/// width, precision (`.N`, `.*`), lengths `h hh l ll z j t`.
unsafe fn format(out: &mut Out, fmt: *const u8, ap: *const u8) {
    let fmt = unsafe { c_str(fmt) };
    let mut args = Args(ap);
    let mut i = 0;
    while i < fmt.len() {
        let c = fmt[i];
        i += 1;
        if c != b'%' {
            let _ = out.write_str(core::str::from_utf8(&[c]).unwrap_or("?"));
            continue;
        }
        let (mut left, mut zero) = (false, false);
        while let Some(&f) = fmt.get(i) {
            match f {
                b'-' => left = true,
                b'0' => zero = true,
                b'+' | b' ' | b'#' => {}
                _ => break,
            }
            i += 1;
        }
        let mut width = 0usize;
        if fmt.get(i) == Some(&b'*') {
            width = unsafe { args.u32() } as usize;
            i += 1;
        }
        while let Some(d @ b'0'..=b'9') = fmt.get(i) {
            width = width * 10 + usize::from(d - b'0');
            i += 1;
        }
        let mut precision = None;
        if fmt.get(i) == Some(&b'.') {
            i += 1;
            let mut p = 0usize;
            if fmt.get(i) == Some(&b'*') {
                p = unsafe { args.u32() } as usize;
                i += 1;
            }
            while let Some(d @ b'0'..=b'9') = fmt.get(i) {
                p = p * 10 + usize::from(d - b'0');
                i += 1;
            }
            precision = Some(p);
        }
        let mut long_long = false;
        while let Some(&l) = fmt.get(i) {
            match l {
                b'l' if fmt.get(i + 1) == Some(&b'l') => {
                    long_long = true;
                    i += 1;
                }
                b'h' | b'l' | b'z' | b'j' | b't' => long_long |= l == b'j',
                _ => break,
            }
            i += 1;
        }
        let Some(&conv) = fmt.get(i) else { break };
        i += 1;
        let mut num = [0u8; 24];
        let text: &[u8] = match conv {
            b'%' => b"%",
            b'c' => {
                num[0] = unsafe { args.u32() } as u8;
                &num[..1]
            }
            b's' => {
                let s = unsafe { c_str(args.u32() as usize as *const u8) };
                &s[..precision.map_or(s.len(), |p| p.min(s.len()))]
            }
            b'd' | b'i' => {
                let v = if long_long {
                    unsafe { args.u64() as i64 }
                } else {
                    i64::from(unsafe { args.u32() } as i32)
                };
                let n = write_num(&mut num, v.unsigned_abs(), 10, false);
                if v < 0 {
                    let at = num.len() - n - 1;
                    num[at] = b'-';
                    &num[at..]
                } else {
                    &num[num.len() - n..]
                }
            }
            b'u' | b'x' | b'X' | b'o' | b'p' => {
                let v = if long_long {
                    unsafe { args.u64() }
                } else {
                    u64::from(unsafe { args.u32() })
                };
                let radix = match conv {
                    b'u' => 10,
                    b'o' => 8,
                    _ => 16,
                };
                let n = write_num(&mut num, v, radix, conv == b'X');
                &num[num.len() - n..]
            }
            other => {
                num[0] = b'%';
                num[1] = other;
                &num[..2]
            }
        };
        let pad = width.saturating_sub(text.len());
        let fill = if zero && !left && conv != b's' {
            "0"
        } else {
            " "
        };
        if !left {
            for _ in 0..pad {
                let _ = out.write_str(fill);
            }
        }
        for &b in text {
            let _ = out.write_str(core::str::from_utf8(&[b]).unwrap_or("?"));
        }
        if left {
            for _ in 0..pad {
                let _ = out.write_str(" ");
            }
        }
    }
}

/// Writes `v` right-aligned at the end of `buf`; returns the number of digits.
fn write_num(buf: &mut [u8; 24], mut v: u64, radix: u64, upper: bool) -> usize {
    let digits: &[u8; 16] = if upper {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    let mut n = 0;
    loop {
        n += 1;
        buf[buf.len() - n] = digits[(v % radix) as usize];
        v /= radix;
        if v == 0 {
            return n;
        }
    }
}

/// C's `vsnprintf`.
///
/// # Safety
/// As in C: `buf` holds `size` bytes, `fmt` is a C string and `ap` matches it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vsnprintf(
    buf: *mut c_char,
    size: usize,
    fmt: *const c_char,
    ap: *const u8,
) -> c_int {
    let mut out = Out {
        buf: buf.cast(),
        cap: size,
        len: 0,
    };
    unsafe { format(&mut out, fmt.cast(), ap) };
    if size > 0 {
        // SAFETY: within the buffer (len is clamped to size - 1).
        unsafe { out.buf.add(out.len.min(size - 1)).write(0) };
    }
    out.len as c_int
}

/// `printf`'s body: the line goes to the log (mbedTLS only prints from debug checks).
///
/// # Safety
/// As `vsnprintf`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dpskit_vprintf(fmt: *const c_char, ap: *const u8) -> c_int {
    let mut line = [0u8; 160];
    let n = unsafe { vsnprintf(line.as_mut_ptr().cast(), line.len(), fmt, ap) };
    let shown = (n.max(0) as usize).min(line.len() - 1);
    log::debug!(
        "mbedTLS: {}",
        core::str::from_utf8(&line[..shown])
            .unwrap_or("?")
            .trim_end()
    );
    n
}

/// C's `puts`.
///
/// # Safety
/// `s` is a C string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn puts(s: *const c_char) -> c_int {
    let text = unsafe { c_str(s.cast()) };
    log::debug!("mbedTLS: {}", core::str::from_utf8(text).unwrap_or("?"));
    0
}
