//! `kube-sim --listen 127.0.0.1:PORT --kubeconfig FILE`: serve the API on
//! loopback and write a kubeconfig pointing at it.

use anyhow::{bail, Context};
use kube_sim::{KubeSim, SimConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut listen = "127.0.0.1:0".to_string();
    let mut kubeconfig = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().context("--listen needs an address")?,
            "--kubeconfig" => kubeconfig = Some(args.next().context("--kubeconfig needs a file")?),
            "-h" | "--help" => {
                println!("usage: kube-sim --listen 127.0.0.1:PORT --kubeconfig FILE");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}; usage: kube-sim --listen 127.0.0.1:PORT --kubeconfig FILE"),
        }
    }
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let sim = KubeSim::serve(listener, SimConfig::default()).await?;
    if let Some(path) = kubeconfig {
        std::fs::write(&path, sim.kubeconfig_yaml()).with_context(|| format!("writing {path}"))?;
    }
    println!("kube-sim serving on {}", sim.url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
