//! Reading a submitted request: its OMC entities checked against the schema
//! ([`crate::omc`]), assets named by an asset manager's identifiers resolved through the
//! asset-identifier map, and the organizations it names checked against those registered.

use serde_json::Value;

use crate::request::{
    parse_json, AssetIds, InputError, ParticipantKind, PolicyRequest, WireRequest,
};
use crate::service::ServiceError;
use crate::store::AuthzStore;

/// The body as submitted (kept as the request's record) and the request it normalizes to.
pub(crate) async fn read(
    store: &dyn AuthzStore,
    body: &[u8],
    now: i64,
) -> Result<(Value, PolicyRequest), ServiceError> {
    let value: Value = parse_json(body)?;
    crate::omc::check_request(&value)?;
    let wire: WireRequest = parse_json(body)?;
    let foreign: Vec<(String, String)> = wire
        .foreign_asset_identifiers()
        .into_iter()
        .map(|i| (i.identifier_scope, i.identifier_value))
        .collect();
    let mut ids = AssetIds::new();
    if !foreign.is_empty() {
        for m in store.lookup_assets(foreign).await? {
            ids.insert((m.scope, m.value), m.path);
        }
    }
    let req = PolicyRequest::from_wire_with(&wire, now, &ids)?;
    check_organizations(store, &req).await?;
    Ok((value, req))
}

/// Every organization a request names (an Organization participant, a Person's
/// organization) must be registered (`csap org add`): deny what csap does not know. What is
/// delegated to it is not consulted yet.
async fn check_organizations(
    store: &dyn AuthzStore,
    req: &PolicyRequest,
) -> Result<(), ServiceError> {
    for (i, p) in req.participants.iter().enumerate() {
        let named = match p.kind {
            ParticipantKind::Organization => Some(&p.id),
            _ => p.organization.as_ref(),
        };
        let Some(org) = named else { continue };
        if store.organization(org).await?.is_none() {
            return Err(InputError::new(
                format!("participants[{i}]"),
                format!("unknown organization {org:?} (add it with `csap org add {org}`)"),
            )
            .into());
        }
    }
    Ok(())
}
