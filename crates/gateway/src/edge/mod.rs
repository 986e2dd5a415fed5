//! Where callers meet the gateway, connections only: the accept loop with its connection caps
//! and handshake deadline (`accept`), the serving of each connection with its HTTP/2 limits and
//! idle timeout (`serve`), the pacing of connections that cost more than a caller should
//! (`pace`), HTTP/2 frame checks (`frames`), and writes coalesced across a connection's streams
//! (`coalesce`). Both listeners, gRPC and HTTP/JSON, go through it, so a peer that connects and
//! stays silent, floods, or overloads the gateway costs other callers nothing. What happens to
//! each call once its connection hands it on (shedding, authentication, fair share, deadlines)
//! is `stack`'s.

pub(crate) mod accept;
pub(crate) mod coalesce;
pub(crate) mod frames;
pub(crate) mod pace;
pub(crate) mod serve;

use std::sync::Arc;

use crate::config::ServerSettings;

/// `AsyncWrite` for a connection wrapper whose `io` field does the writing (`$t`: its type
/// parameter, written through when generic).
macro_rules! write_through {
    ($wrapper:ty $(, $t:ident)?) => {
        impl$(<$t: tokio::io::AsyncWrite + Unpin>)? tokio::io::AsyncWrite for $wrapper {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.io.is_write_vectored()
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
            }
        }
    };
}
pub(crate) use write_through;

/// Which listener a connection came to; metrics and the handshake differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listener {
    Grpc,
    Http,
}

impl Listener {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Listener::Grpc => "grpc",
            Listener::Http => "http",
        }
    }
}

/// The edge's limits: the server settings, with what they leave to the machine resolved.
#[derive(Debug, Clone)]
pub(crate) struct EdgeLimits {
    pub(crate) server: Arc<ServerSettings>,
    /// `server.max_connections`, or the default the open-file limit gives.
    pub(crate) max_connections: usize,
    /// Peers held back for breaking HTTP/2's rules; shared by both listeners.
    pub(crate) penalties: Arc<pace::PeerPenalties>,
}

impl EdgeLimits {
    pub(crate) fn new(settings: &ServerSettings) -> EdgeLimits {
        let max_connections =
            settings.max_connections.unwrap_or_else(|| default_max_connections(open_file_limit().unwrap_or(1024)));
        EdgeLimits {
            server: Arc::new(settings.clone()),
            max_connections,
            penalties: Arc::new(pace::PeerPenalties::new()),
        }
    }
}

/// The process's soft limit of open files, from `/proc/self/limits`.
pub(crate) fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Connections per listener from the open-file limit: a reserve for AWS connections, the store,
/// the admin listener and files (256 plus a tenth), then three quarters of the rest (the other
/// listener shares it).
fn default_max_connections(open_files: u64) -> usize {
    let reserve = (256 + open_files / 10).min(open_files / 2);
    let usable = open_files.saturating_sub(reserve) * 3 / 4;
    usize::try_from(usable.max(16)).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_caps_leave_room_for_the_rest_of_the_process() {
        assert_eq!(default_max_connections(1024), 499);
        assert_eq!(default_max_connections(65_536), 44_045);
        assert_eq!(default_max_connections(64), 24);
        assert_eq!(default_max_connections(8), 16);
        assert!(open_file_limit().is_some_and(|n| n > 0));
    }
}
