//! Prints the WebhookSubscription CRD as YAML; `crds/webhooksubscription.yaml` is its
//! committed output (a test fails when they differ).

use std::io::Write;

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let yaml = metahook_operator::crd::crd_yaml().context("serializing the CRD")?;
    std::io::stdout()
        .write_all(yaml.as_bytes())
        .context("writing the CRD to stdout")?;
    Ok(())
}
