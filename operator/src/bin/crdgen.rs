//! Prints a CRD as YAML: the WebhookSubscription's, or with `replay` the WebhookReplay's;
//! `crds/webhooksubscription.yaml` and `crds/webhookreplay.yaml` are their committed
//! output (a test fails when they differ).

use std::io::Write;

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let yaml = match std::env::args().nth(1).as_deref() {
        None | Some("subscription") => metahook_operator::crd::crd_yaml(),
        Some("replay") => metahook_operator::replay_crd::crd_yaml(),
        Some(other) => anyhow::bail!("unknown CRD {other:?}: subscription or replay"),
    }
    .context("serializing the CRD")?;
    std::io::stdout()
        .write_all(yaml.as_bytes())
        .context("writing the CRD to stdout")?;
    Ok(())
}
