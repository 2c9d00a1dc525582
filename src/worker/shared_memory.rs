//! Large blobs through shared memory (docs/protocol.md, "Shared memory"): the writer puts them
//! end to end in a sealed memfd that travels with the frame's first bytes; the server maps a
//! worker's memfd and answers from the mapping without copying it.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use bytes::Bytes;
use memmap2::MmapOptions;
use serde::Serialize;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::unix::OwnedWriteHalf;

use super::fd_passing;
use super::protocol::{frame_head, inline_blobs, write_frame};

/// Seals a memfd gets once written: its size and bytes can no longer change.
const SEALS: libc::c_int =
    libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;

/// Writes one frame as [`write_frame`] does, but blobs of at least `share_above` bytes (0:
/// none) go in a sealed memfd sent with the frame's first bytes.
pub async fn write_shared_frame(
    out: &mut OwnedWriteHalf,
    header: &impl Serialize,
    blobs: &[&Bytes],
    share_above: usize,
) -> io::Result<()> {
    let shared: Vec<usize> = (0..blobs.len())
        .filter(|&i| share_above > 0 && blobs[i].len() >= share_above)
        .collect();
    if shared.is_empty() {
        return write_frame(out, header, blobs).await;
    }
    let (head, gathered) = frame_head(header, blobs, &shared)?;
    let memory = create(shared.iter().map(|&i| blobs[i]))?;
    let socket = out.as_ref();
    let sent = socket
        .async_io(Interest::WRITABLE, || {
            fd_passing::send_with(socket.as_raw_fd(), &head, &[memory.as_raw_fd()])
        })
        .await?;
    drop(memory);
    out.write_all(&head[sent..]).await?;
    if !gathered {
        for blob in inline_blobs(blobs, &shared) {
            out.write_all(blob).await?;
        }
    }
    out.flush().await
}

/// A sealed memfd holding `blobs` end to end.
fn create<'a>(blobs: impl Iterator<Item = &'a Bytes>) -> io::Result<OwnedFd> {
    // SAFETY: the name is a NUL-terminated string; memfd_create returns a new descriptor or -1.
    let fd = unsafe {
        libc::memfd_create(
            c"torchyard-request".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a descriptor nothing else owns.
    let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    for blob in blobs {
        file.write_all(blob)?;
    }
    // SAFETY: F_ADD_SEALS takes an int argument and touches nothing of ours.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, SEALS) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file.into())
}

/// The first `len` bytes of the memfd `fd`, mapped: it must be sealed against shrinking and
/// writing (so the mapping can neither fault nor change) and hold at least `len` bytes.
pub fn map(fd: OwnedFd, len: usize) -> io::Result<Bytes> {
    let bad = |message: &str| io::Error::new(io::ErrorKind::InvalidData, message.to_string());
    // SAFETY: F_GET_SEALS only reads the descriptor's seals.
    let seals = unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), libc::F_GET_SEALS) };
    let needed = libc::F_SEAL_SHRINK | libc::F_SEAL_WRITE;
    if seals < 0 || seals & needed != needed {
        return Err(bad("shared memory came unsealed"));
    }
    let file = File::from(fd);
    if file.metadata()?.len() < len as u64 {
        return Err(bad("the shared memory is shorter than its blobs"));
    }
    if len == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: the file is sealed against shrinking and writing, so the mapped bytes stay
    // there and stay as they are for as long as the mapping lives.
    let mapping = unsafe { MmapOptions::new().len(len).populate().map(&file)? };
    Ok(Bytes::from_owner(mapping))
}

#[cfg(test)]
mod tests {
    use tokio::net::UnixStream;

    use super::*;
    use crate::worker::fd_passing::DescriptorReader;
    use crate::worker::protocol::FrameReader;

    /// Frames with blobs above and below the threshold, back to back, arrive whole, and the
    /// large blobs came in shared memory.
    #[tokio::test]
    async fn large_blobs_cross_in_shared_memory() {
        let (a, b) = UnixStream::pair().unwrap();
        let (_, mut out) = a.into_split();
        let (input, _keep) = b.into_split();
        let big = Bytes::from((0..300_000u32).map(|i| i as u8).collect::<Vec<u8>>());
        let small = Bytes::from_static(b"small");
        let writer = tokio::spawn(async move {
            for share_above in [1000, 0, 1000] {
                let blobs = [&small, &big, &small, &big];
                let lengths: Vec<usize> = blobs.iter().map(|b| b.len()).collect();
                let header = serde_json::json!({"kind": "x", "blobs": lengths});
                write_shared_frame(&mut out, &header, &blobs, share_above)
                    .await
                    .unwrap();
            }
            (small, big)
        });
        let mut reader = FrameReader::new(DescriptorReader::new(input));
        let frames = [
            reader.next().await.unwrap(),
            reader.next().await.unwrap(),
            reader.next().await.unwrap(),
        ];
        let (small, big) = writer.await.unwrap();
        for (frame, shared_len) in frames.iter().zip([600_000, 0, 600_000]) {
            assert_eq!(frame.shared.len(), shared_len);
            assert_eq!(
                frame.split_blobs().unwrap(),
                [&small, &big, &small, &big].map(Clone::clone)
            );
        }
        let header: serde_json::Value = frames[0].message().unwrap();
        assert_eq!(header["shared"], serde_json::json!([1, 3]));
    }

    #[test]
    fn unsealed_or_short_memory_is_refused() {
        let blob = Bytes::from_static(b"0123456789");
        let sealed = create([&blob].into_iter()).unwrap();
        assert_eq!(&map(sealed.try_clone().unwrap(), 4).unwrap()[..], b"0123");
        let short = map(sealed, 11).unwrap_err();
        assert!(short.to_string().contains("shorter"), "{short}");
        let unsealed: OwnedFd = tempfile::tempfile().unwrap().into();
        let error = map(unsealed, 0).unwrap_err();
        assert!(error.to_string().contains("unsealed"), "{error}");
    }
}
