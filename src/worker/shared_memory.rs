//! Large blobs through shared memory (docs/protocol.md, "Shared memory"): each side of a
//! worker's connection keeps a few memfd regions, mapped once and sent to the other side once,
//! and writes a frame's large blobs end to end into a free one, which the header names. The
//! server's regions carry request bodies ([`RequestRegions`]), the worker's carry its outputs,
//! which the server copies out of its read-only mapping ([`ReplyRegions`]).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use memmap2::{Mmap, MmapMut, MmapOptions};
use serde::Serialize;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::unix::OwnedWriteHalf;

use super::fd_passing;
use super::protocol::{frame_head, inline_blobs, write_frame};

/// The most regions either side of a connection keeps, and the largest region: the blobs of a
/// frame that need more, or that find every region busy, travel in the frame.
pub const MAX_REGIONS: usize = 4;
pub const MAX_REGION_BYTES: usize = 64 << 20;

/// The smallest region made: sizes are rounded up to a power of two from here.
const MIN_REGION_BYTES: usize = 1 << 20;

/// What a frame's header says of its shared memory, beside its own fields.
#[derive(Serialize, Default)]
pub(super) struct SharedFields<'a> {
    /// Indices of the blobs in the region, ascending.
    #[serde(skip_serializing_if = "<[usize]>::is_empty")]
    pub shared: &'a [usize],
    /// The region that holds them, end to end from its start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<u32>,
    /// Set when the frame brings the region's descriptor: its size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region_size: Option<usize>,
    /// The peer's regions the sender is done with (server to worker only).
    #[serde(skip_serializing_if = "<[u32]>::is_empty")]
    pub freed: &'a [u32],
}

/// One of the server's regions, mapped read-write.
struct Region {
    map: MmapMut,
}

/// Holds a server region busy: the worker may still read it until the reply to the frame
/// that used it comes, or the worker is gone. Dropping it frees the region.
pub struct RegionLease {
    _region: Arc<Region>,
}

/// The server's regions of one worker connection, for request blobs.
#[derive(Default)]
pub struct RequestRegions {
    regions: Vec<Arc<Region>>,
}

/// Blobs written into a server region.
struct Written {
    id: u32,
    lease: RegionLease,
    /// The region's descriptor and size, when the worker does not have it yet.
    new: Option<(OwnedFd, usize)>,
}

impl RequestRegions {
    /// Whether blobs of `len` bytes in all would go into a region now.
    pub fn can_take(&self, len: usize) -> bool {
        self.choose(len).is_some()
    }

    /// Which region blobs of `len` bytes go into: a free one that holds them (the smallest),
    /// else a new one while there are fewer than [`MAX_REGIONS`], else a free one made anew
    /// and larger (`true`: to be made). `None`: too large, or every region is busy.
    fn choose(&self, len: usize) -> Option<(usize, bool)> {
        if len > MAX_REGION_BYTES {
            return None;
        }
        let free = || self.regions.iter().enumerate().filter(|(_, r)| is_free(r));
        let fits = free()
            .filter(|(_, r)| r.map.len() >= len)
            .min_by_key(|(_, r)| r.map.len());
        match fits {
            Some((i, _)) => Some((i, false)),
            None if self.regions.len() < MAX_REGIONS => Some((self.regions.len(), true)),
            None => free().next().map(|(i, _)| (i, true)),
        }
    }

    /// Writes `blobs` end to end into a region ([`Self::choose`]); a region is made on a
    /// blocking thread. `None` when none can take them.
    async fn write(&mut self, blobs: &[&Bytes]) -> io::Result<Option<Written>> {
        let len = blobs.iter().map(|b| b.len()).sum();
        let Some((index, make)) = self.choose(len) else {
            return Ok(None);
        };
        let mut new = None;
        if make {
            let size = region_size(len);
            let (fd, map) = tokio::task::spawn_blocking(move || create(size))
                .await
                .map_err(io::Error::other)??;
            let region = Arc::new(Region { map });
            match self.regions.get_mut(index) {
                Some(old) => *old = region,
                None => self.regions.push(region),
            }
            new = Some((fd, size));
        }
        let region = &mut self.regions[index];
        let map = &mut Arc::get_mut(region).expect("a chosen region is free").map;
        let mut at = 0;
        for blob in blobs {
            map[at..at + blob.len()].copy_from_slice(blob);
            at += blob.len();
        }
        Ok(Some(Written {
            id: index as u32,
            lease: RegionLease {
                _region: Arc::clone(region),
            },
            new,
        }))
    }
}

/// Whether a blob of `len` bytes goes in shared memory under `share_above` (0: none does).
pub fn is_shared(len: usize, share_above: usize) -> bool {
    share_above > 0 && len >= share_above
}

fn is_free(region: &Arc<Region>) -> bool {
    Arc::strong_count(region) == 1
}

/// The size of a region for `len` bytes: a power of two from [`MIN_REGION_BYTES`], at most
/// [`MAX_REGION_BYTES`].
fn region_size(len: usize) -> usize {
    len.max(MIN_REGION_BYTES)
        .checked_next_power_of_two()
        .unwrap_or(MAX_REGION_BYTES)
        .min(MAX_REGION_BYTES)
}

/// Seals of every region: its size is fixed (a larger region is a new memfd).
const SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

/// A new region's memfd of `size` bytes, sealed at that size, and its read-write mapping.
fn create(size: usize) -> io::Result<(OwnedFd, MmapMut)> {
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // SAFETY: the name is a NUL-terminated string; memfd_create returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"torchyard-request".as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a descriptor nothing else owns.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.set_len(size as u64)?;
    // SAFETY: F_ADD_SEALS takes an int argument and touches nothing of ours.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, SEALS) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the memfd is sealed against shrinking, so the mapping can never fault.
    let map = unsafe { MmapOptions::new().len(size).map_mut(&file)? };
    Ok((file.into(), map))
}

/// The worker's regions of one connection, as the server maps them (read-only), and those the
/// server has copied a frame's blobs out of since it last told the worker.
#[derive(Default)]
pub struct ReplyRegions {
    maps: Vec<Option<Mmap>>,
    freed: Vec<u32>,
    /// Where blobs are copied to: its allocation is reused once the last copy is dropped, so a
    /// copy does not fault in fresh pages each time.
    buffer: BytesMut,
}

impl ReplyRegions {
    /// Maps the worker's region `id` of `size` bytes from `fd`, in place of one by that id. The
    /// memfd must be sealed against shrinking, so the mapping can never fault (a worker cannot
    /// crash the server), and hold `size` bytes; `id` and `size` are within the limits.
    pub fn map(&mut self, id: u32, fd: OwnedFd, size: usize) -> io::Result<()> {
        let index = id as usize;
        if index >= MAX_REGIONS || size == 0 || size > MAX_REGION_BYTES {
            return Err(invalid(format!("bad region {id} of {size} bytes")));
        }
        // SAFETY: F_GET_SEALS only reads the descriptor's seals.
        let seals = unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
            return Err(invalid(format!(
                "region {id} is not a memfd sealed against shrinking"
            )));
        }
        let file = File::from(fd);
        if file.metadata()?.len() < size as u64 {
            return Err(invalid(format!("region {id} is shorter than {size} bytes")));
        }
        // SAFETY: the memfd cannot shrink (sealed), so the mapped bytes stay there as long as
        // the mapping lives. The worker may still write them: they are only ever copied out.
        let map = unsafe { MmapOptions::new().len(size).map(&file)? };
        if self.maps.len() <= index {
            self.maps.resize_with(index + 1, || None);
        }
        self.maps[index] = Some(map);
        Ok(())
    }

    /// A copy of the first `len` bytes of the worker's region `id`, which is then free for the
    /// worker again (see [`Self::take_freed`]).
    pub fn copy_out(&mut self, id: u32, len: usize) -> io::Result<Bytes> {
        let map = self
            .maps
            .get(id as usize)
            .and_then(Option::as_ref)
            .ok_or_else(|| invalid(format!("the worker's region {id} was never sent")))?;
        let bytes = map
            .get(..len)
            .ok_or_else(|| invalid(format!("shared blobs of {len} bytes exceed region {id}")))?;
        self.buffer.reserve(len);
        self.buffer.extend_from_slice(bytes);
        let copy = self.buffer.split().freeze();
        if !self.freed.contains(&id) {
            self.freed.push(id);
        }
        Ok(copy)
    }

    /// The regions copied out of since the last call: the next frame to the worker says so.
    pub fn take_freed(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.freed)
    }
}

/// Writes one frame as [`write_frame`] does, but blobs of at least `share_above` bytes (0:
/// none) go into a free request region, whose descriptor comes with the frame's first bytes
/// when the worker does not have it yet; `freed` names the worker's regions the server is
/// done with. Returns the lease on the region used, which is busy until it is dropped.
pub async fn write_shared_frame(
    out: &mut OwnedWriteHalf,
    regions: &mut RequestRegions,
    header: &impl Serialize,
    blobs: &[&Bytes],
    share_above: usize,
    freed: &[u32],
) -> io::Result<Option<RegionLease>> {
    let mut shared: Vec<usize> = (0..blobs.len())
        .filter(|&i| is_shared(blobs[i].len(), share_above))
        .collect();
    let written = match shared.is_empty() {
        true => None,
        false => {
            let in_region: Vec<&Bytes> = shared.iter().map(|&i| blobs[i]).collect();
            regions.write(&in_region).await?
        }
    };
    if written.is_none() {
        shared.clear();
        if freed.is_empty() {
            return write_frame(out, header, blobs).await.map(|()| None);
        }
    }
    let fields = SharedFields {
        shared: &shared,
        region: written.as_ref().map(|w| w.id),
        region_size: written.as_ref().and_then(|w| w.new.as_ref()).map(|n| n.1),
        freed,
    };
    let (head, gathered) = frame_head(header, blobs, &fields)?;
    match written.as_ref().and_then(|w| w.new.as_ref()) {
        Some((fd, _)) => {
            let socket = out.as_ref();
            let sent = socket
                .async_io(Interest::WRITABLE, || {
                    fd_passing::send_with(socket.as_raw_fd(), &head, &[fd.as_raw_fd()])
                })
                .await?;
            out.write_all(&head[sent..]).await?;
        }
        None => out.write_all(&head).await?,
    }
    if !gathered {
        for blob in inline_blobs(blobs, &shared) {
            out.write_all(blob).await?;
        }
    }
    out.flush().await?;
    Ok(written.map(|w| w.lease))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use tokio::net::UnixStream;

    use super::*;
    use crate::worker::fd_passing::DescriptorReader;
    use crate::worker::protocol::FrameReader;

    fn blob(len: usize, seed: u8) -> Bytes {
        Bytes::from(
            (0..len)
                .map(|i| (i as u8).wrapping_add(seed))
                .collect::<Vec<u8>>(),
        )
    }

    /// Regions are reused while free, a busy one is not written, a larger one replaces a free
    /// one too small once the pool is full, and blobs find no region when all are busy.
    #[tokio::test]
    async fn regions_are_reused_grown_and_capped() {
        let mut regions = RequestRegions::default();
        let small = blob(1000, 1);
        let first = regions.write(&[&small]).await.unwrap().unwrap();
        assert_eq!(
            (first.id, first.new.as_ref().map(|n| n.1)),
            (0, Some(MIN_REGION_BYTES))
        );
        // Busy: the next frame gets a region of its own.
        let second = regions.write(&[&small, &small]).await.unwrap().unwrap();
        assert_eq!(second.id, 1);
        drop(first);
        // Free again: reused, no descriptor to send.
        let again = regions.write(&[&small]).await.unwrap().unwrap();
        assert_eq!((again.id, again.new.is_none()), (0, true));
        let mut held = vec![again, second];
        for id in 2..MAX_REGIONS as u32 {
            let written = regions.write(&[&small]).await.unwrap().unwrap();
            assert_eq!(written.id, id);
            held.push(written);
        }
        assert!(!regions.can_take(1));
        assert!(regions.write(&[&small]).await.unwrap().is_none());
        // Region 1 freed; 3 MB do not fit in it, so a 4 MB region takes its id.
        held.remove(1);
        assert!(regions.can_take(3 << 20));
        let big = blob(3 << 20, 7);
        let grown = regions.write(&[&big]).await.unwrap().unwrap();
        assert_eq!(
            (grown.id, grown.new.as_ref().map(|n| n.1)),
            (1, Some(4 << 20))
        );
        assert_eq!(&regions.regions[1].map[..big.len()], &big[..]);
        assert!(!regions.can_take(MAX_REGION_BYTES + 1));
        drop(held);
        assert!(regions
            .write(&[&blob(MAX_REGION_BYTES + 1, 0)])
            .await
            .unwrap()
            .is_none());
    }

    #[test]
    fn region_sizes_are_powers_of_two_within_the_limits() {
        assert_eq!(region_size(1), MIN_REGION_BYTES);
        assert_eq!(region_size(MIN_REGION_BYTES), MIN_REGION_BYTES);
        assert_eq!(region_size(MIN_REGION_BYTES + 1), 2 * MIN_REGION_BYTES);
        assert_eq!(region_size(MAX_REGION_BYTES), MAX_REGION_BYTES);
    }

    /// Frames with blobs above and below the threshold, back to back, arrive whole: the
    /// region's descriptor comes once, the later frames name it only.
    #[tokio::test]
    async fn large_blobs_cross_in_a_reused_region() {
        let (a, b) = UnixStream::pair().unwrap();
        let (_, mut out) = a.into_split();
        let (input, _keep) = b.into_split();
        let big = blob(300_000, 3);
        let small = Bytes::from_static(b"small");
        let writer = tokio::spawn(async move {
            let mut regions = RequestRegions::default();
            for share_above in [1000, 0, 1000] {
                let blobs = [&small, &big, &small, &big];
                let lengths: Vec<usize> = blobs.iter().map(|b| b.len()).collect();
                let header = serde_json::json!({"kind": "x", "blobs": lengths});
                let lease =
                    write_shared_frame(&mut out, &mut regions, &header, &blobs, share_above, &[])
                        .await
                        .unwrap();
                assert_eq!(lease.is_some(), share_above > 0);
                drop(lease); // as when the reply comes: the region is free again
            }
            (small, big)
        });
        let mut reader = FrameReader::new(DescriptorReader::new(input));
        let mut frames = Vec::new();
        for _ in 0..3 {
            frames.push(reader.next().await.unwrap());
        }
        let (small, big) = writer.await.unwrap();
        for (frame, shared_len) in frames.iter().zip([600_000, 0, 600_000]) {
            assert_eq!(frame.shared.len(), shared_len);
            assert_eq!(
                frame.split_blobs().unwrap(),
                [&small, &big, &small, &big].map(Clone::clone)
            );
        }
        let headers: Vec<serde_json::Value> = frames.iter().map(|f| f.message().unwrap()).collect();
        assert_eq!(headers[0]["shared"], serde_json::json!([1, 3]));
        assert_eq!(headers[0]["region"], 0);
        assert_eq!(headers[0]["region_size"], MIN_REGION_BYTES);
        assert!(headers[1].get("region").is_none());
        assert_eq!(headers[2]["region"], 0);
        assert!(headers[2].get("region_size").is_none());
        assert_eq!(reader.take_freed(), [0]);
    }

    /// A memfd of `size` bytes as a worker could make it, with `seals`.
    fn worker_region(size: usize, seals: libc::c_int) -> OwnedFd {
        let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
        // SAFETY: as in `create`.
        let fd = unsafe { libc::memfd_create(c"worker".as_ptr(), flags) };
        assert!(fd >= 0);
        // SAFETY: memfd_create returned a descriptor nothing else owns.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        file.set_len(size as u64).unwrap();
        // SAFETY: F_ADD_SEALS takes an int argument.
        assert_eq!(unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals) }, 0);
        file.into()
    }

    /// Only a memfd sealed against shrinking, as large as it claims, within the limits, is
    /// mapped; copies stay within the region, and each region copied out of is freed once.
    #[test]
    fn worker_regions_are_checked_before_they_are_mapped() {
        let mut regions = ReplyRegions::default();
        let unsealed = regions.map(0, worker_region(4096, 0), 4096).unwrap_err();
        assert!(unsealed.to_string().contains("sealed"), "{unsealed}");
        let file = tempfile::tempfile().unwrap();
        file.set_len(4096).unwrap();
        assert!(regions.map(0, file.into(), 4096).is_err());
        let short = regions
            .map(0, worker_region(4096, libc::F_SEAL_SHRINK), 8192)
            .unwrap_err();
        assert!(short.to_string().contains("shorter"), "{short}");
        let sealed = || worker_region(4096, libc::F_SEAL_SHRINK);
        assert!(regions.map(MAX_REGIONS as u32, sealed(), 4096).is_err());
        assert!(regions.map(0, sealed(), MAX_REGION_BYTES + 1).is_err());
        assert!(regions.copy_out(2, 1).is_err());
        regions.map(2, sealed(), 4096).unwrap();
        assert_eq!(regions.copy_out(2, 10).unwrap(), Bytes::from(vec![0u8; 10]));
        assert_eq!(regions.copy_out(2, 4096).unwrap().len(), 4096);
        assert!(regions.copy_out(2, 4097).is_err());
        assert_eq!(regions.take_freed(), [2]);
        assert!(regions.take_freed().is_empty());
    }
}
