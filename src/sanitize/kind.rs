//! The kinds of personal data ragway recognises, and what it does with each.

use serde::{Deserialize, Serialize};

/// A kind of personal data. The order is the priority when two detectors claim
/// overlapping text: the earlier kind wins (an e-mail address wins over the mobile
/// number that is its local part, an ID number over the bank card it also passes as).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Text that already looks like one of ragway's placeholders. Not personal data:
    /// it is swapped out like a value, so that the answer cannot turn the user's own
    /// literal `<PHONE_1>` into someone's number, and restored as written.
    Literal,
    Secret,
    Email,
    IdCard,
    CreditCode,
    BankCard,
    Mobile,
    Landline,
    IntlPhone,
    Passport,
    TravelPermit,
    IpAddress,
}

impl Kind {
    /// Every kind of personal data (all but [`Kind::Literal`]).
    pub const PII: [Kind; 11] = [
        Kind::Secret,
        Kind::Email,
        Kind::IdCard,
        Kind::CreditCode,
        Kind::BankCard,
        Kind::Mobile,
        Kind::Landline,
        Kind::IntlPhone,
        Kind::Passport,
        Kind::TravelPermit,
        Kind::IpAddress,
    ];
    pub const COUNT: usize = 12;

    pub fn index(self) -> usize {
        self as usize
    }

    /// The name in config files, metrics and error messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Literal => "literal",
            Kind::Secret => "secret",
            Kind::Email => "email",
            Kind::IdCard => "id_card",
            Kind::CreditCode => "credit_code",
            Kind::BankCard => "bank_card",
            Kind::Mobile => "mobile",
            Kind::Landline => "landline",
            Kind::IntlPhone => "intl_phone",
            Kind::Passport => "passport",
            Kind::TravelPermit => "travel_permit",
            Kind::IpAddress => "ip_address",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::PII.into_iter().find(|k| k.name() == name)
    }

    /// The word inside this kind's placeholders: `<PHONE_1>`.
    pub fn tag(self) -> &'static str {
        match self {
            Kind::Literal => "LITERAL",
            Kind::Secret => "SECRET",
            Kind::Email => "EMAIL",
            Kind::IdCard => "ID_CARD",
            Kind::CreditCode => "CREDIT_CODE",
            Kind::BankCard => "BANK_CARD",
            Kind::Mobile => "PHONE",
            Kind::Landline => "LANDLINE",
            Kind::IntlPhone => "INTL_PHONE",
            Kind::Passport => "PASSPORT",
            Kind::TravelPermit => "PERMIT",
            Kind::IpAddress => "IP",
        }
    }
}

/// What happens to a detected value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Replaced by a numbered placeholder and restored in the answer.
    Placeholder,
    /// Partly starred out (`138****5678`); not restored.
    Mask,
    /// Replaced by a keyed hash (`<PHONE#1f0c…>`): equal values stay equal across
    /// requests, the value cannot be read back; not restored.
    Hash,
    /// The request is refused with 400 `pii_blocked`.
    Block,
    /// Passed on as written.
    Allow,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Placeholder => "placeholder",
            Action::Mask => "mask",
            Action::Hash => "hash",
            Action::Block => "block",
            Action::Allow => "allow",
        }
    }

    pub fn from_name(name: &str) -> Option<Action> {
        [
            Action::Placeholder,
            Action::Mask,
            Action::Hash,
            Action::Block,
            Action::Allow,
        ]
        .into_iter()
        .find(|a| a.name() == name)
    }
}

/// The action for each kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    actions: [Action; Kind::COUNT],
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            actions: [Action::Placeholder; Kind::COUNT],
        }
    }
}

impl Policy {
    pub fn action(&self, kind: Kind) -> Action {
        self.actions[kind.index()]
    }

    /// Sets a kind's action; a literal placeholder is always swapped out.
    pub fn set(&mut self, kind: Kind, action: Action) {
        if kind != Kind::Literal {
            self.actions[kind.index()] = action;
        }
    }
}

/// Written as a table of kind → action, as the config file takes it.
impl Serialize for Policy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(Kind::PII.len()))?;
        for kind in Kind::PII {
            map.serialize_entry(kind.name(), self.action(kind).name())?;
        }
        map.end()
    }
}
