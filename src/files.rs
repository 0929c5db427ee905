//! Reading the small files configuration points at (`~/.databrickscfg`, CA bundles): regular
//! files only, and never more than a cap, so that a FIFO, a device such as `/dev/zero` or a
//! huge file gives a clear error instead of a hang or an out-of-memory abort in `build()`.

use std::io::{self, Read};
use std::path::Path;

/// The largest configuration file read: config files and CA bundles are a few KiB (the
/// whole Mozilla bundle is about 250 KiB).
pub(crate) const MAX_CONFIG_FILE: u64 = 4 * 1024 * 1024;

/// Reads `path` whole, if it is a regular file of at most `limit` bytes. The error says
/// what the path is instead (a FIFO, a device, a directory) or that it is too large.
pub(crate) fn read_bounded(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    // `stat` follows links and never blocks, unlike `open` on a FIFO without a writer.
    let kind = std::fs::metadata(path)?.file_type();
    if !kind.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("it is not a regular file ({})", describe(kind)),
        ));
    }
    let mut bytes = Vec::new();
    let _ = std::fs::File::open(path)?
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("it is larger than the {limit}-byte limit"),
        ));
    }
    Ok(bytes)
}

fn describe(kind: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_directories_and_oversized_files_are_refused_without_reading_them() {
        let err = read_bounded(Path::new("/dev/zero"), 1024).unwrap_err();
        assert!(err.to_string().contains("a device"), "{err}");
        let err = read_bounded(Path::new("/tmp"), 1024).unwrap_err();
        assert!(err.to_string().contains("a directory"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 2048]).unwrap();
        let err = read_bounded(&big, 1024).unwrap_err();
        assert!(err.to_string().contains("1024-byte limit"), "{err}");
        assert_eq!(read_bounded(&big, 4096).unwrap().len(), 2048);
    }

    /// A FIFO with no writer makes `open` block for ever; it must be refused before that.
    #[test]
    fn a_fifo_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo runs");
        assert!(made.success());
        let err = read_bounded(&fifo, 1024).unwrap_err();
        assert!(err.to_string().contains("a FIFO"), "{err}");
    }
}
