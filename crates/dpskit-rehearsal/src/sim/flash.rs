//! The SPI flash chip of a virtual board: NOR semantics (erase sets bytes to 0xFF, programming
//! can only clear bits), backed by memory for unit tests or by an image file that tests and
//! other tools read back while the board runs.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Erase granularity of the SPI flash (4 KiB sector).
pub const SECTOR_SIZE: u32 = 0x1000;

/// A NOR flash chip.
pub trait FlashStore: Send {
    /// Capacity in bytes.
    fn size(&self) -> u32;
    /// Reads `buf.len()` bytes at `offset` (the caller keeps it in range).
    fn read(&mut self, offset: u32, buf: &mut [u8]) -> io::Result<()>;
    /// Programs `data` at `offset`: each byte becomes `old & new`, as on real NOR flash.
    fn program(&mut self, offset: u32, data: &[u8]) -> io::Result<()>;
    /// Sets `len` bytes at `offset` to 0xFF.
    fn erase(&mut self, offset: u32, len: u32) -> io::Result<()>;

    /// Reads a range into a new vector.
    fn read_vec(&mut self, offset: u32, len: u32) -> io::Result<Vec<u8>> {
        let mut v = vec![0; len as usize];
        self.read(offset, &mut v)?;
        Ok(v)
    }

    /// MD5 of a range, streamed in sector-sized reads.
    fn md5(&mut self, offset: u32, len: u32) -> io::Result<[u8; 16]> {
        use md5::{Digest, Md5};
        let mut h = Md5::new();
        let mut buf = vec![0u8; 0x10000];
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let n = (end - pos).min(buf.len() as u32);
            self.read(pos, &mut buf[..n as usize])?;
            h.update(&buf[..n as usize]);
            pos += n;
        }
        Ok(h.finalize().into())
    }
}

/// Flash held in memory.
#[derive(Debug, Clone)]
pub struct MemFlash {
    pub data: Vec<u8>,
}

impl MemFlash {
    /// An erased chip of `size` bytes.
    pub fn erased(size: u32) -> Self {
        MemFlash {
            data: vec![0xFF; size as usize],
        }
    }

    /// A chip holding `image`, padded with 0xFF to `size`.
    pub fn with_image(size: u32, image: &[u8]) -> Self {
        let mut f = Self::erased(size);
        f.data[..image.len()].copy_from_slice(image);
        f
    }
}

impl FlashStore for MemFlash {
    fn size(&self) -> u32 {
        self.data.len() as u32
    }
    fn read(&mut self, offset: u32, buf: &mut [u8]) -> io::Result<()> {
        let o = offset as usize;
        buf.copy_from_slice(&self.data[o..o + buf.len()]);
        Ok(())
    }
    fn program(&mut self, offset: u32, data: &[u8]) -> io::Result<()> {
        let o = offset as usize;
        for (dst, src) in self.data[o..o + data.len()].iter_mut().zip(data) {
            *dst &= *src;
        }
        Ok(())
    }
    fn erase(&mut self, offset: u32, len: u32) -> io::Result<()> {
        let o = offset as usize;
        self.data[o..o + len as usize].fill(0xFF);
        Ok(())
    }
}

/// Flash backed by an image file, written through on every program/erase so the file always
/// shows what the chip holds.
#[derive(Debug)]
pub struct FileFlash {
    file: File,
    path: PathBuf,
    size: u32,
}

impl FileFlash {
    /// Creates (or truncates) `path` as an erased chip of `size` bytes holding `image` at 0.
    pub fn create(path: &Path, size: u32, image: &[u8]) -> io::Result<Self> {
        if image.len() > size as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "flash image larger than the flash",
            ));
        }
        // After a write the image holds a derived key and a Wi-Fi password: owner only, also
        // when an older image with wider permissions is being replaced.
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        let mut content = vec![0xFFu8; size as usize];
        content[..image.len()].copy_from_slice(image);
        file.write_all_at(&content, 0)?;
        Ok(FileFlash {
            file,
            path: path.to_path_buf(),
            size,
        })
    }

    /// Opens an existing image; its length is the flash size.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let len = file.metadata()?.len();
        let size = u32::try_from(len)
            .ok()
            .filter(|s| s.is_power_of_two() && *s >= 0x10_0000)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: {len} bytes is not a flash size (a power of two, at least 1 MB)",
                        path.display()
                    ),
                )
            })?;
        Ok(FileFlash {
            file,
            path: path.to_path_buf(),
            size,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl FlashStore for FileFlash {
    fn size(&self) -> u32 {
        self.size
    }
    fn read(&mut self, offset: u32, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset.into())
    }
    fn program(&mut self, offset: u32, data: &[u8]) -> io::Result<()> {
        let mut cur = vec![0u8; data.len()];
        self.file.read_exact_at(&mut cur, offset.into())?;
        for (c, d) in cur.iter_mut().zip(data) {
            *c &= *d;
        }
        self.file.write_all_at(&cur, offset.into())
    }
    fn erase(&mut self, offset: u32, len: u32) -> io::Result<()> {
        let ff = vec![0xFFu8; len.min(0x10000) as usize];
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let n = (end - pos).min(ff.len() as u32);
            self.file.write_all_at(&ff[..n as usize], pos.into())?;
            pos += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_only_clears_bits() {
        let mut f = MemFlash::erased(0x2000);
        f.program(0x10, &[0xF0, 0x0F]).unwrap();
        f.program(0x10, &[0x3C, 0xFF]).unwrap();
        assert_eq!(f.read_vec(0x10, 2).unwrap(), vec![0x30, 0x0F]);
        f.erase(0, SECTOR_SIZE).unwrap();
        assert_eq!(f.read_vec(0x10, 2).unwrap(), vec![0xFF, 0xFF]);
    }

    #[test]
    fn file_flash_writes_through() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.bin");
        let mut f = FileFlash::create(&p, 0x10_0000, b"hello").unwrap();
        f.erase(0, SECTOR_SIZE).unwrap();
        f.program(0x100, b"abc").unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(bytes.len(), 0x10_0000);
        assert_eq!(&bytes[0..5], &[0xFF; 5]);
        assert_eq!(&bytes[0x100..0x103], b"abc");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "flash images hold keys: owner only");
        let mut again = FileFlash::open(&p).unwrap();
        assert_eq!(again.size(), 0x10_0000);
        assert_eq!(
            again.md5(0x100, 3).unwrap(),
            <[u8; 16]>::from(md5::Md5::digest(b"abc"))
        );
    }

    use md5::Digest;
}
