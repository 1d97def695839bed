//! What a node is started with.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct Config {
    /// The data folder: database, identity key, media. Created if missing.
    pub data_dir: PathBuf,
    /// Where the Client-Server API listens (port 0: any free port; see `Node::client_addr`).
    pub client_listen: SocketAddr,
}

impl Config {
    /// The embedded default address: loopback only, the port Matrix clients try first.
    pub const DEFAULT_CLIENT_LISTEN: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8008);

    pub fn new(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            data_dir: data_dir.into(),
            client_listen: Config::DEFAULT_CLIENT_LISTEN,
        }
    }
}
