//! Passing file descriptors over a Unix stream socket (`SCM_RIGHTS`): on the fork server's
//! sockets each batch travels on a one-byte marker message, so the frames around it stay plain
//! worker-protocol frames; on a worker's socket a frame's shared memory comes with the frame's
//! first bytes ([`DescriptorReader`]).

use std::collections::VecDeque;
use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, Interest, ReadBuf};
use tokio::net::unix::OwnedReadHalf;
use tokio::net::UnixStream;

use super::protocol::FrameInput;

/// The most descriptors one marker may carry.
const MAX_FDS: usize = 8;

/// Sends the marker byte carrying `fds` (possibly none).
pub async fn send(stream: &UnixStream, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many descriptors",
        ));
    }
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let sent = stream
        .async_io(Interest::WRITABLE, || {
            send_with(stream.as_raw_fd(), &[0], &raw)
        })
        .await?;
    match sent {
        1 => Ok(()),
        _ => Err(io::ErrorKind::WriteZero.into()),
    }
}

/// Receives one marker byte and the descriptors it carries (close-on-exec), at most `max`.
pub async fn receive(stream: &UnixStream, max: usize) -> io::Result<Vec<OwnedFd>> {
    let max = max.min(MAX_FDS);
    let mut fds = Vec::new();
    let received = stream
        .async_io(Interest::READABLE, || {
            receive_with(
                stream.as_raw_fd(),
                &mut [MaybeUninit::new(0)],
                max,
                &mut fds,
            )
        })
        .await?;
    if received == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(fds)
}

/// The read half of a worker's socket: its bytes, as any stream's, and the descriptors that
/// come with them, kept in the order they came until their frames take them.
pub struct DescriptorReader {
    half: OwnedReadHalf,
    fds: VecDeque<OwnedFd>,
}

impl DescriptorReader {
    pub fn new(half: OwnedReadHalf) -> Self {
        Self {
            half,
            fds: VecDeque::new(),
        }
    }
}

impl AsyncRead for DescriptorReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let stream: &UnixStream = this.half.as_ref();
        loop {
            ready!(stream.poll_read_ready(cx))?;
            // SAFETY: recvmsg only writes bytes into the unfilled part, and only the bytes it
            // says it wrote are marked filled below.
            let unfilled = unsafe { buf.unfilled_mut() };
            let mut fds = Vec::new();
            let received = stream.try_io(Interest::READABLE, || {
                receive_with(stream.as_raw_fd(), unfilled, MAX_FDS, &mut fds)
            });
            this.fds.extend(fds);
            match received {
                Ok(n) => {
                    // SAFETY: recvmsg wrote these `n` bytes.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl FrameInput for DescriptorReader {
    fn pending_descriptors(&self) -> usize {
        self.fds.len()
    }

    fn take_descriptor(&mut self) -> Option<OwnedFd> {
        self.fds.pop_front()
    }
}

/// Room for `MAX_FDS` descriptors in a control message, aligned as `cmsghdr` needs.
#[repr(C)]
union ControlBuffer {
    bytes: [u8; control_space(MAX_FDS)],
    _align: libc::cmsghdr,
}

const fn control_space(fds: usize) -> usize {
    // SAFETY: CMSG_SPACE only computes a size.
    unsafe { libc::CMSG_SPACE((fds * size_of::<RawFd>()) as u32) as usize }
}

/// Calls `f` with a message header for `data` whose control buffer (room for [`MAX_FDS`]
/// descriptors, aligned) starts `control_len` bytes long.
fn with_message<R>(
    data: *mut u8,
    len: usize,
    control_len: usize,
    f: impl FnOnce(&mut libc::msghdr) -> R,
) -> R {
    let mut iov = libc::iovec {
        iov_base: data.cast(),
        iov_len: len,
    };
    let mut control = ControlBuffer {
        bytes: [0; control_space(MAX_FDS)],
    };
    // SAFETY: msghdr is plain data; all-zero is its empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if control_len > 0 {
        msg.msg_control = (&raw mut control).cast();
        msg.msg_controllen = control_len.min(control_space(MAX_FDS)) as _;
    }
    f(&mut msg)
}

/// Sends what it can of `bytes` (not empty), `fds` with the first of them: how many bytes
/// went. `WouldBlock` when the socket's buffer is full.
pub fn send_with(socket: RawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    let control_len = if fds.is_empty() {
        0
    } else {
        control_space(fds.len())
    };
    // sendmsg only reads the data it is given.
    let data = bytes.as_ptr().cast_mut();
    let sent = with_message(data, bytes.len(), control_len, |msg| {
        if !fds.is_empty() {
            let data_len = std::mem::size_of_val(fds);
            // SAFETY: the buffer holds a header and `fds` (control_space), aligned for
            // cmsghdr; CMSG_FIRSTHDR is non-null because msg_controllen covers a header.
            unsafe {
                let header = libc::CMSG_FIRSTHDR(msg);
                (*header).cmsg_level = libc::SOL_SOCKET;
                (*header).cmsg_type = libc::SCM_RIGHTS;
                (*header).cmsg_len = libc::CMSG_LEN(data_len as u32) as _;
                std::ptr::copy_nonoverlapping(
                    fds.as_ptr().cast::<u8>(),
                    libc::CMSG_DATA(header),
                    data_len,
                );
            }
        }
        // SAFETY: msg points at live buffers of the lengths it states.
        unsafe { libc::sendmsg(socket, msg, libc::MSG_NOSIGNAL) }
    });
    usize::try_from(sent).map_err(|_| io::Error::last_os_error())
}

/// Receives into `buf`, and the descriptors (close-on-exec, at most `max`) that come with the
/// bytes into `fds`: how many bytes came, 0 at the end of the stream. `WouldBlock` when none
/// are there.
pub fn receive_with(
    socket: RawFd,
    buf: &mut [MaybeUninit<u8>],
    max: usize,
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    let data = buf.as_mut_ptr().cast();
    let (received, flags) = with_message(data, buf.len(), control_space(max), |msg| {
        // SAFETY: msg points at live buffers of the lengths it states.
        let received = unsafe { libc::recvmsg(socket, msg, libc::MSG_CMSG_CLOEXEC) };
        if received > 0 {
            // SAFETY: the kernel filled msg_control with well-formed headers up to
            // msg_controllen; every descriptor of an SCM_RIGHTS message is ours, owned once.
            unsafe { take_descriptors(msg, fds) };
        }
        (received, msg.msg_flags)
    });
    let received = usize::try_from(received).map_err(|_| io::Error::last_os_error())?;
    // The buffer may have room for one more than `max` (CMSG_SPACE rounds up).
    if flags & libc::MSG_CTRUNC != 0 || fds.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("more than {max} descriptors came with a message"),
        ));
    }
    Ok(received)
}

/// Moves the descriptors of the SCM_RIGHTS messages in `msg`'s control buffer into `fds`.
///
/// # Safety
/// `msg` holds what `recvmsg` received, and nothing owns those descriptors yet.
unsafe fn take_descriptors(msg: &libc::msghdr, fds: &mut Vec<OwnedFd>) {
    let mut header = libc::CMSG_FIRSTHDR(msg);
    while !header.is_null() {
        if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_RIGHTS {
            let data = libc::CMSG_DATA(header);
            let len = (*header).cmsg_len as usize - (data as usize - header as usize);
            for i in 0..len / size_of::<RawFd>() {
                let fd = data.add(i * size_of::<RawFd>()).cast::<RawFd>();
                fds.push(OwnedFd::from_raw_fd(fd.read_unaligned()));
            }
        }
        header = libc::CMSG_NXTHDR(msg, header);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    use super::*;

    #[tokio::test]
    async fn a_pipe_end_crosses_the_socket() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut reader, writer) = std::io::pipe().unwrap();
        send(&a, &[writer.as_fd()]).await.unwrap();
        drop(writer);
        let fds = receive(&b, 2).await.unwrap();
        assert_eq!(fds.len(), 1);
        let mut received = std::fs::File::from(fds.into_iter().next().unwrap());
        received.write_all(b"through").unwrap();
        drop(received);
        let mut text = String::new();
        reader.read_to_string(&mut text).unwrap();
        assert_eq!(text, "through");
    }

    #[tokio::test]
    async fn a_marker_without_descriptors_and_the_end_of_the_stream() {
        let (a, b) = UnixStream::pair().unwrap();
        send(&a, &[]).await.unwrap();
        assert!(receive(&b, 3).await.unwrap().is_empty());
        drop(a);
        let eof = receive(&b, 3).await.unwrap_err();
        assert_eq!(eof.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn more_descriptors_than_wanted_are_refused_and_closed() {
        let (a, b) = UnixStream::pair().unwrap();
        let (reader, writer) = std::io::pipe().unwrap();
        send(&a, &[reader.as_fd(), writer.as_fd()]).await.unwrap();
        let refused = receive(&b, 1).await.unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::InvalidData);
    }
}
