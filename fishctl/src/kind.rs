//! Object kinds, shared by the command line, the client and the renderers.

use clap::ValueEnum;
use clap::builder::PossibleValue;

/// Object kinds, with the names and aliases kubectl users reach for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum)]
pub enum Kind {
    #[value(name = "labels", aliases = ["label", "lbl", "lbls"])]
    Label,
    #[value(name = "applications", aliases = ["application", "app", "apps"])]
    Application,
    #[value(name = "nodes", aliases = ["node", "no"])]
    Node,
    #[value(name = "users", aliases = ["user"])]
    User,
    /// Read-only: gates are configured in fish.yml.
    #[value(name = "gates", aliases = ["gate"])]
    Gate,
}

impl Kind {
    /// The path segment of the kind in the API: `/api/v1/<plural>`.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Label => "labels",
            Kind::Application => "applications",
            Kind::Node => "nodes",
            Kind::User => "users",
            Kind::Gate => "gates",
        }
    }

    /// The singular lower-case name used in `kind/name` output.
    pub fn singular(self) -> &'static str {
        match self {
            Kind::Label => "label",
            Kind::Application => "application",
            Kind::Node => "node",
            Kind::User => "user",
            Kind::Gate => "gate",
        }
    }
}

/// What `get` takes: one kind, or `all` (every workload kind, as `kubectl get all`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KindOrAll {
    Kind(Kind),
    All,
}

impl ValueEnum for KindOrAll {
    fn value_variants<'a>() -> &'a [Self] {
        &[
            KindOrAll::Kind(Kind::Label),
            KindOrAll::Kind(Kind::Application),
            KindOrAll::Kind(Kind::Node),
            KindOrAll::Kind(Kind::User),
            KindOrAll::Kind(Kind::Gate),
            KindOrAll::All,
        ]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        match self {
            KindOrAll::Kind(k) => k.to_possible_value(),
            KindOrAll::All => Some(PossibleValue::new("all")),
        }
    }
}
