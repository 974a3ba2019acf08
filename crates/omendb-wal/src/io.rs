//! The file I/O the local log does, as a small trait so faults can be injected (`omendb-chaos`
//! wraps it; the crate's own tests do too), and [`StdIo`], its implementation on `std::fs`.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// An open log file: written and read anywhere.
pub trait IoFile: Send + Sync + fmt::Debug {
    /// Writes `buf` at `offset` (overwriting, or extending the file) and returns how many bytes
    /// were stored. Fewer than `buf.len()` is a short write, which the log treats as a failure.
    /// The log writes only at or after the end of its records: into the zeros it wrote ahead
    /// of them, or at the end of the file.
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<usize>;
    /// Makes every written byte durable (`fdatasync`).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Reads into `buf` from `offset`; returns the bytes read (0 at the end).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// The current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Cuts the file to `len` bytes; later appends continue there.
    fn truncate(&mut self, len: u64) -> io::Result<()>;
    /// Reserves space for `len` bytes without changing the length, where the OS allows.
    fn preallocate(&mut self, len: u64) -> io::Result<()> {
        let _ = len;
        Ok(())
    }
}

/// The directory operations of the log, and how it opens files.
pub trait FileIo: Send + Sync + fmt::Debug + 'static {
    /// Creates `dir` and its parents if missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Creates a new file at `path`; fails if it exists.
    fn create(&self, path: &Path) -> io::Result<Box<dyn IoFile>>;
    /// Opens the existing file at `path` for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Box<dyn IoFile>>;
    /// The names of the entries of `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Deletes the file at `path`.
    fn delete(&self, path: &Path) -> io::Result<()>;
    /// Makes the entries of `dir` (creations, renames, deletions) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on the log in `dir`, held until the returned guard is dropped;
    /// fails with [`io::ErrorKind::WouldBlock`] if another handle holds it. The default takes no
    /// lock.
    fn lock_dir(&self, dir: &Path) -> io::Result<Box<dyn std::any::Any + Send + Sync>> {
        let _ = dir;
        Ok(Box::new(()))
    }
}

/// The file [`StdIo::lock_dir`] locks in a log's directory.
const LOCK_FILE: &str = "LOCK";

/// [`FileIo`] on the local file system through `std::fs`. The directory lock is a `flock` on
/// `LOCK` on Linux and absent elsewhere.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdIo;

/// A [`StdIo`] file.
#[derive(Debug)]
struct StdFile {
    file: File,
    path: PathBuf,
}

impl IoFile for StdFile {
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<usize> {
        #[cfg(unix)]
        {
            std::os::unix::fs::FileExt::write_all_at(&self.file, buf, offset)?;
        }
        #[cfg(windows)]
        {
            let mut done = 0;
            while done < buf.len() {
                let n = std::os::windows::fs::FileExt::seek_write(
                    &self.file,
                    &buf[done..],
                    offset + done as u64,
                )?;
                if n == 0 {
                    return Err(io::Error::from(io::ErrorKind::WriteZero));
                }
                done += n;
            }
        }
        Ok(buf.len())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        #[cfg(unix)]
        {
            std::os::unix::fs::FileExt::read_at(&self.file, buf, offset)
        }
        #[cfg(windows)]
        {
            std::os::windows::fs::FileExt::seek_read(&self.file, buf, offset)
        }
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn preallocate(&mut self, len: u64) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            let len_now = self.len()?;
            if len > len_now {
                // KEEP_SIZE reserves blocks without moving the end of file, so recovery still
                // sees exactly the bytes written. Some file systems (tmpfs on old kernels) do
                // not support it; that only costs the optimisation.
                match rustix::fs::fallocate(
                    &self.file,
                    rustix::fs::FallocateFlags::KEEP_SIZE,
                    len_now,
                    len - len_now,
                ) {
                    Ok(()) => {}
                    Err(e) if e == rustix::io::Errno::OPNOTSUPP => {}
                    Err(e) => return Err(io::Error::from(e)),
                }
            }
        }
        let _ = (len, &self.path);
        Ok(())
    }
}

impl FileIo for StdIo {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn IoFile>> {
        // Not in append mode: positional writes land where they are aimed (on Linux, `pwrite`
        // on an `O_APPEND` file ignores its offset).
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(Box::new(StdFile {
            file,
            path: path.to_owned(),
        }))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn IoFile>> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Box::new(StdFile {
            file,
            path: path.to_owned(),
        }))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            if let Some(name) = entry?.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn delete(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn lock_dir(&self, dir: &Path) -> io::Result<Box<dyn std::any::Any + Send + Sync>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK_FILE))?;
        // `flock` locks belong to the open file, so a second handle in the same process is
        // refused as well as another process. The lock goes when the file is closed.
        #[cfg(target_os = "linux")]
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |e| match e {
                rustix::io::Errno::WOULDBLOCK => io::Error::from(io::ErrorKind::WouldBlock),
                e => io::Error::from(e),
            },
        )?;
        Ok(Box::new(file))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        #[cfg(unix)]
        {
            File::open(dir)?.sync_all()
        }
        // Windows has no directory handle to sync; NTFS journals its metadata.
        #[cfg(not(unix))]
        {
            let _ = dir;
            Ok(())
        }
    }
}

/// Creates `dir` and its missing parents, and makes each created directory's entry in its
/// parent durable: a crash soon after could otherwise lose a new directory, and every synced
/// file in it, however often the files and the directory itself were synced.
pub fn create_dir_durable(io: &dyn FileIo, dir: &Path) -> io::Result<()> {
    // The directories missing now, innermost first.
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && io.list(a).is_err())
        .collect();
    io.create_dir_all(dir)?;
    for created in missing.iter().rev() {
        let parent = created
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        io.sync_dir(parent)?;
    }
    Ok(())
}

/// Reads the whole file: `len` bytes from offset 0.
pub(crate) fn read_all(file: &dyn IoFile, len: u64) -> io::Result<Vec<u8>> {
    let len = usize::try_from(len).map_err(|_| io::Error::other("file larger than memory"))?;
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n = file.read_at(done as u64, &mut buf[done..])?;
        if n == 0 {
            buf.truncate(done);
            break;
        }
        done += n;
    }
    Ok(buf)
}
