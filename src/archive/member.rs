//! Files an archive's manifest names (config, spec, handler, requirements): confined to the
//! unpacked directory like its entries, regular files only, and read with a size cap.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use super::ArchiveError;

/// Largest manifest, spec, model-config or workflow handler the server reads into memory.
pub const MAX_MEMBER_BYTES: u64 = 1 << 20;

/// Resolves `name`, a file named by the archive's manifest, inside the unpacked `dir`. It must
/// be a relative path without `..`, no part of it a symbolic link, and name a regular file.
/// Errors name the member, never the content of what it points at.
pub fn member_path(dir: &Path, name: &str) -> Result<PathBuf, ArchiveError> {
    let invalid = |why: &str| ArchiveError::Invalid(format!("{name:?} {why}"));
    let parts: Vec<_> = Path::new(name)
        .components()
        .filter(|c| *c != Component::CurDir)
        .map(|c| match c {
            Component::Normal(part) => Ok(part),
            _ => Err(invalid("must be a relative path inside the archive")),
        })
        .collect::<Result<_, _>>()?;
    if parts.is_empty() {
        return Err(invalid("must be a relative path inside the archive"));
    }
    let mut path = dir.to_path_buf();
    for part in parts {
        path.push(part);
        let meta =
            std::fs::symlink_metadata(&path).map_err(|_| invalid("is missing from the archive"))?;
        if meta.file_type().is_symlink() {
            return Err(invalid("is a symbolic link"));
        }
    }
    if !std::fs::symlink_metadata(&path)?.is_file() {
        return Err(invalid("is not a regular file"));
    }
    Ok(path)
}

/// Reads member `name` of `dir` (see [`member_path`]) as UTF-8 text of at most
/// [`MAX_MEMBER_BYTES`].
pub fn read_member(dir: &Path, name: &str) -> Result<String, ArchiveError> {
    let invalid = |why: &str| ArchiveError::Invalid(format!("{name:?} {why}"));
    let path = member_path(dir, name)?;
    // No following a link swapped in since the check, no blocking on a fifo.
    let file: File = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .map_err(|_| invalid("cannot be opened"))?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(invalid("is not a regular file"));
    }
    let too_big = || invalid(&format!("is larger than {MAX_MEMBER_BYTES} bytes"));
    if meta.len() > MAX_MEMBER_BYTES {
        return Err(too_big());
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_MEMBER_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_MEMBER_BYTES {
        return Err(too_big());
    }
    String::from_utf8(bytes).map_err(|_| invalid("is not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/config.yaml"), "a: 1\n").unwrap();
        dir
    }

    #[test]
    fn reads_a_member() {
        let dir = archive_dir();
        assert_eq!(
            read_member(dir.path(), "./sub/config.yaml").unwrap(),
            "a: 1\n"
        );
    }

    #[test]
    fn refuses_names_outside_the_archive_without_echoing_them() {
        let dir = archive_dir();
        for name in [
            "/etc/passwd",
            "../../../../etc/passwd",
            "sub/../../x",
            "",
            ".",
        ] {
            let err = read_member(dir.path(), name).unwrap_err().to_string();
            assert!(err.contains("relative path"), "{name}: {err}");
            assert!(!err.contains("root:"), "{err}");
        }
    }

    #[test]
    fn refuses_links_devices_directories_and_big_files() {
        let dir = archive_dir();
        let root = dir.path();
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("etc")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", root.join("zero")).unwrap();
        std::fs::write(root.join("big"), vec![b'a'; MAX_MEMBER_BYTES as usize + 1]).unwrap();
        let cases = [
            ("link", "symbolic link"),
            ("etc/passwd", "symbolic link"),
            ("zero", "symbolic link"),
            ("sub", "not a regular file"),
            ("missing.yaml", "missing"),
            ("big", "larger than"),
        ];
        for (name, expected) in cases {
            let err = read_member(root, name).unwrap_err().to_string();
            assert!(err.contains(expected), "{name}: {err}");
        }
    }
}
