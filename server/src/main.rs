//! `fieldpatch-server`: the central inventory and sync API.

use clap::Parser;
use std::net::SocketAddr;

#[derive(Parser, Debug)]
#[command(name = "fieldpatch-server", version, about = "Fieldpatch central inventory and sync API")]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8470")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let bound = fieldpatch_server::Bound::bind(cli.listen).await?;
    tracing::info!(addr = %bound.local_addr(), "listening");
    bound.serve().await?;
    Ok(())
}
