//! What lets the mount remember a caller's attestation safely: the kernel's exec notices (the
//! proc connector, `NETLINK_CONNECTOR`/`CN_IDX_PROC`) and pidfds.
//!
//! An attestation (executable digest, injection-free start-up environment) describes one
//! program image, and holds until that process calls `execve`. The kernel queues the exec
//! notice on every listening socket *during* `execve`, before the new image runs an
//! instruction, so a reader that drains this socket after a request arrived has seen every exec
//! the caller made before it asked. Lost notices are reported, never silent: the socket keeps
//! `NETLINK_NO_ENOBUFS` off, so an overrun comes back as `ENOBUFS` ([`Notice::Lost`]).
//!
//! A [`Pidfd`] names one thread for as long as it lives; once it is gone the number may be
//! reused, but the pidfd says "gone" rather than pointing at the newcomer.
//!
//! With [`crate::procmap`], the only `unsafe` in csapfs: syscalls that neither std nor nix wraps
//! (`socket(NETLINK_CONNECTOR)` with its `sockaddr_nl`, `pidfd_open`, `pidfd_send_signal`).
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// `linux/netlink.h`, `linux/connector.h`, `linux/cn_proc.h`, `linux/pidfd.h`.
const NETLINK_CONNECTOR: libc::c_int = 11;
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_EVENT_EXEC: u32 = 0x0000_0002;
const NLMSG_DONE: u16 = 3;
const PIDFD_THREAD: libc::c_uint = libc::O_EXCL as libc::c_uint;

const NLMSG_HDR: usize = 16;
const CN_MSG_HDR: usize = 20;
/// Offset of `proc_event.what`, and of `exec_proc_event.{process_pid, process_tgid}`.
const EVENT_WHAT: usize = NLMSG_HDR + CN_MSG_HDR;
const EXEC_PID: usize = EVENT_WHAT + 16;
const EXEC_TGID: usize = EXEC_PID + 4;

/// Room for bursts between two drains (the kernel doubles it; forcing it needs CAP_NET_ADMIN,
/// which a listener has anyway).
const RECV_BUFFER: libc::c_int = 4 << 20;

/// How long the start-up self test waits for the exec notice of a child it starts.
const SELF_TEST_WAIT: Duration = Duration::from_secs(5);

/// One thing the kernel told us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// Thread `pid` of process `tgid` replaced its program image.
    Exec { pid: u32, tgid: u32 },
    /// Notices were dropped (receive buffer overrun): assume every process exec'd.
    Lost,
}

/// A subscription to the kernel's exec notices.
#[derive(Debug)]
pub struct ExecWatch {
    fd: OwnedFd,
}

impl ExecWatch {
    /// Subscribes, then proves the subscription works by starting `true` and waiting for its
    /// exec notice under the pid this process sees (which also rules out a PID namespace whose
    /// numbers differ from the kernel's). Any failure means "no notices": the caller must not
    /// remember attestations.
    pub fn open() -> io::Result<ExecWatch> {
        // SAFETY: plain socket(2); the result is checked before it is wrapped.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                NETLINK_CONNECTOR,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        let watch = ExecWatch {
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
        };
        let size = RECV_BUFFER;
        // SAFETY: the option value points at a live c_int of the size passed. Failure only
        // means a smaller buffer (overruns are still reported).
        unsafe {
            libc::setsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        watch.bind()?;
        // Only exec notices (Linux ≥ 6.6 filters per socket); older kernels ignore a request of
        // this size, and then the plain subscription (every notice) is tried.
        if watch
            .subscribe(true)
            .and_then(|()| watch.self_test())
            .is_ok()
        {
            return Ok(watch);
        }
        watch.subscribe(false)?;
        watch.self_test()?;
        Ok(watch)
    }

    fn bind(&self) -> io::Result<()> {
        // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = CN_IDX_PROC;
        // SAFETY: the address points at a live sockaddr_nl of the size passed.
        let rc = unsafe {
            libc::bind(
                self.fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sends `PROC_CN_MCAST_LISTEN`, as `struct proc_input` (with an exec-only filter) or as
    /// the bare `enum proc_cn_mcast_op` older kernels expect.
    fn subscribe(&self, exec_only: bool) -> io::Result<()> {
        let mut payload = PROC_CN_MCAST_LISTEN.to_ne_bytes().to_vec();
        if exec_only {
            payload.extend_from_slice(&PROC_EVENT_EXEC.to_ne_bytes());
        }
        let len = NLMSG_HDR + CN_MSG_HDR + payload.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
        msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
        msg.extend_from_slice(&std::process::id().to_ne_bytes());
        msg.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
        msg.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
        msg.extend_from_slice(&0u32.to_ne_bytes()); // ack
        msg.extend_from_slice(&(payload.len() as u16).to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
        msg.extend_from_slice(&payload);
        // SAFETY: the buffer is live and its length is passed.
        let sent = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn self_test(&self) -> io::Result<()> {
        let mut child = std::process::Command::new("true")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let pid = child.id();
        let deadline = Instant::now() + SELF_TEST_WAIT;
        let mut seen = false;
        while !seen && Instant::now() < deadline {
            self.wait_readable(Duration::from_millis(50))?;
            self.drain(|n| seen |= matches!(n, Notice::Exec { pid: p, .. } if p == pid))?;
        }
        let _ = child.wait();
        if seen {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "no exec notice for test child {pid} within {SELF_TEST_WAIT:?}"
            )))
        }
    }

    fn wait_readable(&self, timeout: Duration) -> io::Result<()> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
        let err = io::Error::last_os_error();
        if rc < 0 && err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
        Ok(())
    }

    /// Hands every queued notice to `each`, oldest first, and returns once the queue is empty.
    /// Messages not from the kernel (port 0) or not exec notices are skipped.
    pub fn drain(&self, mut each: impl FnMut(Notice)) -> io::Result<()> {
        let mut buf = [0u8; 256];
        loop {
            // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
            let mut from: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
            // SAFETY: buffer and address are live, their sizes passed.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_nl).cast(),
                    &mut from_len,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(()),
                    Some(libc::EINTR) => continue,
                    Some(libc::ENOBUFS) => {
                        each(Notice::Lost);
                        continue;
                    }
                    _ => return Err(err),
                }
            }
            if from.nl_pid != 0 {
                continue;
            }
            if let Some(notice) = parse_exec(&buf[..n as usize]) {
                each(notice);
            }
        }
    }
}

/// The exec notice in one connector datagram, if it is one.
fn parse_exec(msg: &[u8]) -> Option<Notice> {
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(msg.get(at..at + 4)?.try_into().ok()?))
    };
    let is_proc = u32_at(NLMSG_HDR)? == CN_IDX_PROC && u32_at(NLMSG_HDR + 4)? == CN_VAL_PROC;
    if !is_proc || u32_at(EVENT_WHAT)? != PROC_EVENT_EXEC {
        return None;
    }
    Some(Notice::Exec {
        pid: u32_at(EXEC_PID)?,
        tgid: u32_at(EXEC_TGID)?,
    })
}

/// A handle on one thread that says whether it still lives (`pidfd_open(PIDFD_THREAD)`).
#[derive(Debug)]
pub struct Pidfd(OwnedFd);

impl Pidfd {
    /// Opens thread `tid` (a FUSE request names the calling thread). Fails with `ESRCH` if it
    /// is gone, `EINVAL` on kernels before 6.9 (no `PIDFD_THREAD`).
    pub fn open(tid: u32) -> io::Result<Pidfd> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, tid as libc::pid_t, PIDFD_THREAD) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        Ok(Pidfd(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) }))
    }

    /// True while the thread exists (signal 0 probes without sending).
    pub fn alive(&self) -> bool {
        // SAFETY: a valid pidfd, signal 0, no siginfo, no flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                0,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        rc == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lost notices must be reported: with a receive buffer too small for a burst of execs,
    /// draining yields [`Notice::Lost`] (the proc-connector crate would have hidden this by
    /// switching `NETLINK_NO_ENOBUFS` on).
    #[test]
    fn an_overrun_is_reported_as_lost() {
        let watch = ExecWatch::open().expect("proc connector (needs root, CONFIG_PROC_EVENTS)");
        let tiny: libc::c_int = 1;
        // SAFETY: the option value points at a live c_int of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                watch.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&tiny as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        for _ in 0..100 {
            std::process::Command::new("true").status().unwrap();
        }
        let mut lost = false;
        watch.drain(|n| lost |= n == Notice::Lost).unwrap();
        assert!(
            lost,
            "100 execs into a minimal buffer, and no overrun reported"
        );
    }

    #[test]
    fn parses_exec_notices_only() {
        let mut msg = vec![0u8; EXEC_TGID + 4];
        msg[NLMSG_HDR..NLMSG_HDR + 4].copy_from_slice(&CN_IDX_PROC.to_ne_bytes());
        msg[NLMSG_HDR + 4..NLMSG_HDR + 8].copy_from_slice(&CN_VAL_PROC.to_ne_bytes());
        msg[EVENT_WHAT..EVENT_WHAT + 4].copy_from_slice(&PROC_EVENT_EXEC.to_ne_bytes());
        msg[EXEC_PID..EXEC_PID + 4].copy_from_slice(&42u32.to_ne_bytes());
        msg[EXEC_TGID..EXEC_TGID + 4].copy_from_slice(&40u32.to_ne_bytes());
        assert_eq!(parse_exec(&msg), Some(Notice::Exec { pid: 42, tgid: 40 }));
        assert_eq!(parse_exec(&msg[..EXEC_TGID]), None, "truncated");
        let mut fork = msg.clone();
        fork[EVENT_WHAT..EVENT_WHAT + 4].copy_from_slice(&1u32.to_ne_bytes());
        assert_eq!(parse_exec(&fork), None);
        let mut other = msg;
        other[NLMSG_HDR..NLMSG_HDR + 4].copy_from_slice(&7u32.to_ne_bytes());
        assert_eq!(parse_exec(&other), None);
    }

    /// The mount runs as root on a kernel with the proc connector; CI too. Without it, callers
    /// are measured on every open (correct, slower): this test says so loudly.
    #[test]
    fn sees_the_exec_of_a_child() {
        let watch = ExecWatch::open().expect("proc connector (needs root, CONFIG_PROC_EVENTS)");
        let mut child = std::process::Command::new("sleep")
            .arg("0")
            .spawn()
            .unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let mut seen = Vec::new();
        let deadline = Instant::now() + SELF_TEST_WAIT;
        while !seen.contains(&pid) && Instant::now() < deadline {
            watch.wait_readable(Duration::from_millis(50)).unwrap();
            watch
                .drain(|n| {
                    if let Notice::Exec { pid, .. } = n {
                        seen.push(pid)
                    }
                })
                .unwrap();
        }
        assert!(seen.contains(&pid), "no exec notice for {pid}");
    }

    #[test]
    fn a_pidfd_outlives_its_thread_without_naming_another() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let fd = Pidfd::open(child.id()).expect("pidfd_open(PIDFD_THREAD), Linux ≥ 6.9");
        assert!(fd.alive());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!fd.alive());
        let mine = Pidfd::open(nix::unistd::gettid().as_raw() as u32).unwrap();
        assert!(mine.alive());
    }
}
