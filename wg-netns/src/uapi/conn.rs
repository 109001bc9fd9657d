//! [`UapiConn`]: a handle on a daemon's control socket, its `get` and
//! `set` exchanges, and the PID of the process serving it.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use zeroize::Zeroizing;

use crate::device::{Device, DeviceConfig};
use crate::error::{Error, Result};

use super::wire::{encode_set, parse_errno, parse_get};

#[cfg(doc)]
use super::{Launcher, Userspace};

/// A handle on a userspace device's control socket.
#[derive(Debug, Clone)]
pub(crate) struct UapiConn {
    name: String,
    socket: PathBuf,
    io_timeout: Duration,
}

impl UapiConn {
    /// Check that `socket` answers and return a handle.
    pub(crate) fn connect(name: &str, socket: &Path, io_timeout: Duration) -> Result<Self> {
        let c = UapiConn {
            name: name.to_string(),
            socket: socket.to_path_buf(),
            io_timeout,
        };
        c.stream()?;
        Ok(c)
    }

    fn stream(&self) -> Result<UnixStream> {
        let s = UnixStream::connect(&self.socket)
            .map_err(|e| Error::connecting(crate::error::Object::Device, &self.socket, e))?;
        let _ = s.set_read_timeout(Some(self.io_timeout));
        let _ = s.set_write_timeout(Some(self.io_timeout));
        Ok(s)
    }

    /// The device (socket) name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// PID of the process that listens on the socket (`SO_PEERCRED`). For a
    /// daemonizing implementation that is the parent, which has exited;
    /// [`Userspace::daemon_pid`] checks it. [`Error::NotFound`] when the
    /// kernel reports no PID: the daemon is outside this process's PID
    /// namespace (started by a [`Launcher`] on the host while this process
    /// runs in a container).
    pub(crate) fn peer_pid(&self) -> Result<u32> {
        use std::os::fd::AsRawFd;
        let s = self.stream()?;
        // Read with libc rather than rustix: rustix's `UCred` holds a
        // non-zero PID, and the kernel answers 0 for a peer in a PID
        // namespace this one cannot see.
        let mut cred = libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: `cred` and `len` are valid for writes of the sizes given,
        // and the descriptor is open for the duration of the call.
        let rc = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(Error::io(
                format!("SO_PEERCRED on {}", self.socket.display()),
                std::io::Error::last_os_error(),
            ));
        }
        u32::try_from(cred.pid)
            .ok()
            .filter(|pid| *pid != 0)
            .ok_or_else(|| Error::NotFound {
                what: crate::error::Object::Device,
                name: format!(
                    "the process serving {} (not in this PID namespace)",
                    self.socket.display()
                ),
            })
    }

    /// Send `request` and read the reply up to the blank line that ends it.
    fn exchange(&self, request: &[u8]) -> Result<Zeroizing<String>> {
        crate::fault::check("UAPI exchange")?;
        self.exchange_on(self.stream()?, request)
    }

    fn exchange_on(&self, mut s: UnixStream, request: &[u8]) -> Result<Zeroizing<String>> {
        s.write_all(request)
            .map_err(|e| Error::io(format!("writing to {}", self.socket.display()), e))?;
        let mut reply = Zeroizing::new(String::new());
        let mut r = BufReader::new(&mut s);
        let mut line = Zeroizing::new(String::new());
        loop {
            line.clear();
            let n = r
                .by_ref()
                .take(1 << 20)
                .read_line(&mut line)
                .map_err(|e| Error::io(format!("reading from {}", self.socket.display()), e))?;
            if n == 0 || *line == "\n" {
                break;
            }
            reply.push_str(&line);
        }
        Ok(reply)
    }

    pub(crate) fn set(&self, cfg: &DeviceConfig) -> Result<()> {
        let reply = self.exchange(encode_set(cfg).as_bytes())?;
        parse_errno(&self.name, &reply)
    }

    pub(crate) fn get(&self) -> Result<Device> {
        let reply = self.exchange(b"get=1\n\n")?;
        parse_get(&self.name, &reply)
    }
}
