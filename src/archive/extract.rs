//! Safe unpacking of zip and tar.gz archives: no entry may land outside the target directory.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use super::ArchiveError;

/// How much one archive may unpack to (`max_archive_unpacked_bytes`, `max_archive_entries`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Total bytes of the unpacked files.
    pub max_bytes: u64,
    /// Files and directories.
    pub max_entries: u64,
}

impl Default for UnpackLimits {
    /// 4 GiB holds the weights of models up to about 2 billion fp16 parameters; larger
    /// models are served from an unpacked directory, which is used in place.
    fn default() -> Self {
        Self {
            max_bytes: 4 << 30,
            max_entries: 10_000,
        }
    }
}

impl UnpackLimits {
    fn too_big(&self) -> ArchiveError {
        ArchiveError::Invalid(format!(
            "archive unpacks to more than {} bytes (max_archive_unpacked_bytes)",
            self.max_bytes
        ))
    }

    fn too_many(&self) -> ArchiveError {
        ArchiveError::Invalid(format!(
            "archive has more than {} entries (max_archive_entries)",
            self.max_entries
        ))
    }
}

/// What is left of the limits while unpacking.
struct Budget<'a> {
    limits: &'a UnpackLimits,
    bytes: u64,
    entries: u64,
}

impl<'a> Budget<'a> {
    fn new(limits: &'a UnpackLimits) -> Self {
        Self {
            limits,
            bytes: limits.max_bytes,
            entries: limits.max_entries,
        }
    }

    /// Counts one more entry.
    fn entry(&mut self) -> Result<(), ArchiveError> {
        self.entries = self
            .entries
            .checked_sub(1)
            .ok_or_else(|| self.limits.too_many())?;
        Ok(())
    }

    /// Copies one file's data into `path`, refusing at once what declares more than is left.
    fn write(
        &mut self,
        declared: u64,
        data: &mut impl Read,
        path: &Path,
    ) -> Result<(), ArchiveError> {
        if declared > self.bytes {
            return Err(self.limits.too_big());
        }
        let mut out = File::create(path)?;
        let copied = io::copy(&mut data.take(self.bytes + 1), &mut out)?;
        self.bytes = self
            .bytes
            .checked_sub(copied)
            .ok_or_else(|| self.limits.too_big())?;
        Ok(())
    }
}

/// Returns the directory holding the archive's files: `source` itself if it is a directory,
/// otherwise a fresh directory under `work_dir` into which the zip or tar.gz was unpacked
/// within `limits` (removed again if unpacking fails).
pub fn unpack(
    source: &Path,
    work_dir: &Path,
    limits: &UnpackLimits,
) -> Result<PathBuf, ArchiveError> {
    let meta =
        fs::metadata(source).map_err(|_| ArchiveError::NotFound(source.display().to_string()))?;
    if meta.is_dir() {
        return Ok(source.to_path_buf());
    }
    fs::create_dir_all(work_dir)?;
    let target = tempfile::Builder::new()
        .prefix("archive-")
        .tempdir_in(work_dir)?
        .keep();
    let result =
        unpack_file(source, &target, limits).and_then(|()| Ok(hoist_single_root(&target)?));
    if result.is_err() {
        let _ = fs::remove_dir_all(&target);
    }
    result.map(|()| target)
}

fn unpack_file(source: &Path, target: &Path, limits: &UnpackLimits) -> Result<(), ArchiveError> {
    let mut magic = [0u8; 4];
    let read = File::open(source)?.read(&mut magic)?;
    match &magic[..read] {
        [b'P', b'K', 3, 4] | [b'P', b'K', 5, 6] => unzip(source, target, limits),
        [0x1f, 0x8b, ..] => untar_gz(source, target, limits),
        _ => Err(ArchiveError::Invalid(format!(
            "{} is neither a zip nor a tar.gz archive",
            source.display()
        ))),
    }
}

/// Moves the files of a lone top folder holding the manifest (`NAME/MAR-INF/…`, the layout
/// torch-model-archiver gives tar.gz archives) up into `target`.
fn hoist_single_root(target: &Path) -> io::Result<()> {
    let entries: Vec<PathBuf> = fs::read_dir(target)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    let [root] = entries.as_slice() else {
        return Ok(());
    };
    if !["MAR-INF", "WAR-INF"].iter().any(|m| root.join(m).is_dir()) {
        return Ok(());
    }
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        fs::rename(entry.path(), target.join(entry.file_name()))?;
    }
    fs::remove_dir(root)
}

/// Joins an archive entry name onto `target`, refusing absolute paths and `..`.
fn safe_join(target: &Path, name: &Path) -> Result<PathBuf, ArchiveError> {
    let mut out = target.to_path_buf();
    for part in name.components() {
        match part {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => {
                return Err(ArchiveError::Invalid(format!(
                    "entry {} escapes the archive",
                    name.display()
                )))
            }
        }
    }
    Ok(out)
}

fn unzip(source: &Path, target: &Path, limits: &UnpackLimits) -> Result<(), ArchiveError> {
    let invalid = |e: zip::result::ZipError| ArchiveError::Invalid(e.to_string());
    let mut zip = zip::ZipArchive::new(File::open(source)?).map_err(invalid)?;
    if zip.len() as u64 > limits.max_entries {
        return Err(limits.too_many());
    }
    if zip
        .decompressed_size()
        .is_some_and(|total| total > u128::from(limits.max_bytes))
    {
        return Err(limits.too_big());
    }
    let mut budget = Budget::new(limits);
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(invalid)?;
        budget.entry()?;
        if entry.is_symlink() {
            return Err(ArchiveError::Invalid(format!(
                "entry {} is a symbolic link",
                entry.name()
            )));
        }
        let path = safe_join(target, Path::new(entry.name()))?;
        if entry.is_dir() {
            fs::create_dir_all(&path)?;
            continue;
        }
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        budget.write(entry.size(), &mut entry, &path)?;
    }
    Ok(())
}

fn untar_gz(source: &Path, target: &Path, limits: &UnpackLimits) -> Result<(), ArchiveError> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(File::open(source)?));
    let mut budget = Budget::new(limits);
    for entry in tar.entries()? {
        let mut entry = entry?;
        let name = entry.path()?.into_owned();
        let path = safe_join(target, &name)?;
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            budget.entry()?;
            fs::create_dir_all(&path)?;
        } else if kind.is_file() {
            budget.entry()?;
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            budget.write(entry.size(), &mut entry, &path)?;
        } else if !matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            return Err(ArchiveError::Invalid(format!(
                "entry {} is not a regular file or directory",
                name.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_zip(path: &Path, entries: &[(&str, &[u8])]) {
        let mut zip = zip::ZipWriter::new(File::create(path).unwrap());
        for (name, data) in entries {
            zip.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            zip.write_all(data).unwrap();
        }
        zip.finish().unwrap();
    }

    #[test]
    fn unzips_nested_entries() {
        let dir = tempfile::tempdir().unwrap();
        let mar = dir.path().join("m.mar");
        write_zip(
            &mar,
            &[("MAR-INF/MANIFEST.json", b"{}"), ("a/b.txt", b"hi")],
        );
        let out = unpack(&mar, dir.path(), &UnpackLimits::default()).unwrap();
        assert_eq!(fs::read(out.join("a/b.txt")).unwrap(), b"hi");
        assert!(out.join("MAR-INF/MANIFEST.json").is_file());
    }

    #[test]
    fn rejects_zip_slip() {
        let dir = tempfile::tempdir().unwrap();
        let mar = dir.path().join("evil.mar");
        write_zip(&mar, &[("../../escape.txt", b"x")]);
        let err = unpack(&mar, &dir.path().join("work"), &UnpackLimits::default()).unwrap_err();
        assert!(err.to_string().contains("escapes"), "{err}");
        assert!(!dir.path().join("escape.txt").exists());
    }

    #[test]
    fn rejects_symlinks_in_zip_and_tar() {
        let dir = tempfile::tempdir().unwrap();
        let mar = dir.path().join("link.mar");
        let mut zip = zip::ZipWriter::new(File::create(&mar).unwrap());
        zip.add_symlink(
            "evil",
            "/etc/passwd",
            zip::write::SimpleFileOptions::default(),
        )
        .unwrap();
        zip.finish().unwrap();
        let err = unpack(&mar, &dir.path().join("a"), &UnpackLimits::default()).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");

        let tgz = dir.path().join("link.tar.gz");
        let gz =
            flate2::write::GzEncoder::new(File::create(&tgz).unwrap(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        tar.append_link(&mut header, "evil", "/etc/passwd").unwrap();
        tar.into_inner().unwrap().finish().unwrap();
        let err = unpack(&tgz, &dir.path().join("b"), &UnpackLimits::default()).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn untars_gzip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.tar.gz");
        let gz = flate2::write::GzEncoder::new(
            File::create(&path).unwrap(),
            flate2::Compression::fast(),
        );
        let mut tar = tar::Builder::new(gz);
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        header.set_mode(0o644);
        tar.append_data(&mut header, "x/y.txt", &b"ok"[..]).unwrap();
        tar.into_inner().unwrap().finish().unwrap();
        let out = unpack(&path, dir.path(), &UnpackLimits::default()).unwrap();
        assert_eq!(fs::read(out.join("x/y.txt")).unwrap(), b"ok");
    }

    #[test]
    fn hoists_a_single_named_root_folder() {
        let dir = tempfile::tempdir().unwrap();
        let mar = dir.path().join("nested.mar");
        write_zip(
            &mar,
            &[("m/MAR-INF/MANIFEST.json", b"{}"), ("m/h.py", b"x")],
        );
        let out = unpack(&mar, dir.path(), &UnpackLimits::default()).unwrap();
        assert!(out.join("MAR-INF/MANIFEST.json").is_file() && out.join("h.py").is_file());
        assert!(!out.join("m").exists());
    }

    #[test]
    fn rejects_garbage_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.mar");
        fs::write(&path, b"not an archive").unwrap();
        assert!(matches!(
            unpack(&path, dir.path(), &UnpackLimits::default()),
            Err(ArchiveError::Invalid(_))
        ));
        assert!(matches!(
            unpack(
                &dir.path().join("none.mar"),
                dir.path(),
                &UnpackLimits::default()
            ),
            Err(ArchiveError::NotFound(_))
        ));
    }

    type Entries<'a> = &'a [(&'a str, &'a [u8])];

    fn write_tgz(path: &Path, entries: Entries) {
        let gz =
            flate2::write::GzEncoder::new(File::create(path).unwrap(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        for (name, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            tar.append_data(&mut header, name, *data).unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap();
    }

    #[test]
    fn enforces_the_limits_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let limits = UnpackLimits {
            max_bytes: 1000,
            max_entries: 3,
        };
        let big = vec![0u8; 1001];
        let many: Entries = &[("a", b"1"), ("b", b"2"), ("c", b"3"), ("d", b"4")];
        let cases: [(&str, Entries, &str); 2] = [
            (
                "big",
                &[("a", b"x"), ("zeros", &big)],
                "max_archive_unpacked_bytes",
            ),
            ("many", many, "max_archive_entries"),
        ];
        for (name, entries, limit) in cases {
            let zip = dir.path().join(format!("{name}.mar"));
            write_zip(&zip, entries);
            let tgz = dir.path().join(format!("{name}.tar.gz"));
            write_tgz(&tgz, entries);
            for source in [zip, tgz] {
                let work = dir.path().join("work");
                let err = unpack(&source, &work, &limits).unwrap_err().to_string();
                assert!(err.contains(limit), "{}: {err}", source.display());
                assert_eq!(fs::read_dir(&work).unwrap().count(), 0);
            }
        }
        let fits = dir.path().join("fits.mar");
        write_zip(&fits, &many[..3]);
        assert!(unpack(&fits, &dir.path().join("work"), &limits).is_ok());
    }
}

#[cfg(test)]
mod robustness {
    use std::io::Write;

    use proptest::prelude::*;

    use super::*;

    fn files_under(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(files_under(&path));
            } else {
                out.push(path);
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the entry names, nothing lands outside the unpack directory.
        #[test]
        fn entries_never_escape(names in prop::collection::vec(
            prop::collection::vec(prop::sample::select(vec!["a", "b.txt", "..", ".", "/", "c"]), 1..5),
            1..5,
        )) {
            let root = tempfile::tempdir().unwrap();
            let mar = root.path().join("in.mar");
            let mut zip = zip::ZipWriter::new(File::create(&mar).unwrap());
            for parts in &names {
                let name = parts.join("/");
                if zip.start_file(name.as_str(), zip::write::SimpleFileOptions::default()).is_ok() {
                    zip.write_all(b"x").unwrap();
                }
            }
            zip.finish().unwrap();
            let work = root.path().join("work");
            let result = unpack(&mar, &work, &UnpackLimits::default());
            for file in files_under(root.path()) {
                prop_assert!(file == mar || file.starts_with(&work), "{} escaped", file.display());
            }
            if let Ok(dir) = result {
                prop_assert!(dir.starts_with(&work));
            }
        }

        /// Truncated archives are refused, never half-trusted.
        #[test]
        fn truncated_zips_fail_cleanly(cut in 1usize..200) {
            let root = tempfile::tempdir().unwrap();
            let mar = root.path().join("in.mar");
            let mut zip = zip::ZipWriter::new(File::create(&mar).unwrap());
            zip.start_file("MAR-INF/MANIFEST.json", zip::write::SimpleFileOptions::default()).unwrap();
            zip.write_all(&[b'{'; 300]).unwrap();
            zip.finish().unwrap();
            let bytes = fs::read(&mar).unwrap();
            fs::write(&mar, &bytes[..bytes.len().saturating_sub(cut)]).unwrap();
            prop_assert!(unpack(&mar, &root.path().join("work"), &UnpackLimits::default()).is_err());
        }
    }
}
