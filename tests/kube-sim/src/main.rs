//! `kube-sim --listen 127.0.0.1:PORT --kubeconfig FILE`: serve the API on
//! loopback and write a kubeconfig pointing at it. `--time-scale F`
//! multiplies every simulated delay of the Job controller (default 1);
//! `--no-job-controller` leaves Jobs as created (a bare API server).

use anyhow::{bail, Context};
use kube_sim::{KubeSim, SimConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut listen = "127.0.0.1:0".to_string();
    let mut kubeconfig = None;
    let mut config = SimConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().context("--listen needs an address")?,
            "--kubeconfig" => kubeconfig = Some(args.next().context("--kubeconfig needs a file")?),
            "--time-scale" => {
                config.time_scale = args
                    .next()
                    .context("--time-scale needs a number")?
                    .parse()
                    .context("--time-scale needs a number")?
            }
            "--no-job-controller" => config.job_controller = false,
            "-h" | "--help" => {
                println!("usage: kube-sim --listen 127.0.0.1:PORT --kubeconfig FILE [--time-scale F] [--no-job-controller]");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}; usage: kube-sim --listen 127.0.0.1:PORT --kubeconfig FILE [--time-scale F] [--no-job-controller]"),
        }
    }
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let sim = KubeSim::serve(listener, config).await?;
    if let Some(path) = kubeconfig {
        std::fs::write(&path, sim.kubeconfig_yaml()).with_context(|| format!("writing {path}"))?;
    }
    println!("kube-sim serving on {}", sim.url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
