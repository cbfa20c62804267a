//! `fishctl describe label|application|node|gate NAME`.

use anyhow::Result;
use api_types::{Application, Gate, Label, Node};
use time::OffsetDateTime;

use super::Env;
use crate::cli::{DescribeArgs, DescribeKind};
use crate::kind::Kind;
use crate::output::describe;

/// Fetches one object and prints its page.
pub async fn run(env: &Env, args: DescribeArgs) -> Result<()> {
    let client = env.client()?;
    let now = OffsetDateTime::now_utc();
    let page = match args.kind {
        DescribeKind::Application => {
            describe::application(&client.get_typed::<Application>(Kind::Application, &args.name).await?, now)
        }
        DescribeKind::Label => describe::label(&client.get_typed::<Label>(Kind::Label, &args.name).await?, now),
        DescribeKind::Node => describe::node(&client.get_typed::<Node>(Kind::Node, &args.name).await?, now),
        DescribeKind::Gate => describe::gate(&client.get_typed::<Gate>(Kind::Gate, &args.name).await?, now),
    };
    super::out(&page)?;
    Ok(())
}
