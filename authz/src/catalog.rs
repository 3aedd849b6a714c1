//! The service side of authz's catalog: the asset-identifier map and the organizations
//! ([`crate::store::catalog`]), each input checked before it is stored.

use crate::model::{check_name, normalize_pattern};
use crate::request::InputError;
use crate::service::{now, Authz, ServiceError};
use crate::store::{AssetMapping, Organization};

/// Most entries one `POST /v1/asset-ids` may add (a bulk import is sent in such batches).
pub const MAX_MAPPINGS: usize = 10_000;

/// What a production can delegate to an organization (CSAP Part 1 §8).
pub const DELEGATIONS: [&str; 3] = ["authentication", "authorization", "asset-protection"];

/// Checks one map entry: a scope and value as an asset manager writes them (text, not the
/// csap scopes `path` and `scope`) and a csap path pattern, which is stored normalized.
pub fn check_mapping(m: &AssetMapping, field: &str) -> Result<AssetMapping, InputError> {
    if m.scope.is_empty() || m.scope.len() > 128 || m.scope.chars().any(char::is_control) {
        return Err(InputError::new(
            format!("{field}.scope"),
            "must be 1 to 128 printable characters",
        ));
    }
    if m.scope == "path" || m.scope == "scope" || m.scope == "csap" {
        return Err(InputError::new(
            format!("{field}.scope"),
            format!(
                "{:?} is csap's own identifier scope; name the asset manager's",
                m.scope
            ),
        ));
    }
    if m.value.is_empty() || m.value.len() > 1024 || m.value.chars().any(char::is_control) {
        return Err(InputError::new(
            format!("{field}.value"),
            "must be 1 to 1024 printable characters",
        ));
    }
    let path =
        normalize_pattern(&m.path).map_err(|e| InputError::new(format!("{field}.path"), e))?;
    Ok(AssetMapping {
        scope: m.scope.clone(),
        value: m.value.clone(),
        path,
    })
}

/// Parses `--delegate` names into (authentication, authorization, asset protection).
pub fn parse_delegations(names: &[String]) -> Result<(bool, bool, bool), InputError> {
    let mut flags = (false, false, false);
    for (i, n) in names.iter().enumerate() {
        match n.as_str() {
            "authentication" => flags.0 = true,
            "authorization" => flags.1 = true,
            "asset-protection" | "asset_protection" => flags.2 = true,
            other => {
                return Err(InputError::new(
                    format!("delegate[{i}]"),
                    format!("{other:?} is not one of {}", DELEGATIONS.join(", ")),
                ))
            }
        }
    }
    Ok(flags)
}

impl Authz {
    /// Adds or replaces asset-identifier map entries (all or none).
    pub async fn add_asset_mappings(
        &self,
        entries: Vec<AssetMapping>,
    ) -> Result<usize, ServiceError> {
        if entries.is_empty() {
            return Err(InputError::new("entries", "must name at least one entry").into());
        }
        if entries.len() > MAX_MAPPINGS {
            return Err(InputError::new(
                "entries",
                format!("at most {MAX_MAPPINGS} entries per call"),
            )
            .into());
        }
        let checked = entries
            .iter()
            .enumerate()
            .map(|(i, m)| check_mapping(m, &format!("entries[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let n = self.store().put_asset_mappings(checked).await?;
        tracing::info!(entries = n, "asset-identifier map updated");
        Ok(n)
    }

    pub async fn asset_mappings(&self) -> Result<Vec<AssetMapping>, ServiceError> {
        Ok(self.store().asset_mappings().await?)
    }

    /// Registers an organization with what is delegated to it.
    pub async fn add_organization(
        &self,
        name: &str,
        delegate: &[String],
    ) -> Result<Organization, ServiceError> {
        check_name(name).map_err(|m| InputError::new("name", m))?;
        let (authentication, authorization, asset_protection) = parse_delegations(delegate)?;
        let org = Organization {
            name: name.to_string(),
            authentication,
            authorization,
            asset_protection,
            created_at: now()?,
        };
        if !self.store().add_organization(org.clone()).await? {
            return Err(ServiceError::Conflict(format!(
                "organization {name} exists (remove it first to change it)"
            )));
        }
        tracing::info!(organization = %name, ?delegate, "organization added");
        Ok(org)
    }

    pub async fn organizations(&self) -> Result<Vec<Organization>, ServiceError> {
        Ok(self.store().organizations().await?)
    }

    pub async fn organization(&self, name: &str) -> Result<Organization, ServiceError> {
        self.store()
            .organization(name)
            .await?
            .ok_or_else(|| ServiceError::NotFound {
                what: "organization",
                id: name.to_string(),
            })
    }

    /// Removes an organization. Requests that name it keep their rules (they were issued
    /// while it was registered); new ones naming it are refused.
    pub async fn remove_organization(&self, name: &str) -> Result<(), ServiceError> {
        if !self.store().remove_organization(name).await? {
            return Err(ServiceError::NotFound {
                what: "organization",
                id: name.to_string(),
            });
        }
        tracing::info!(organization = %name, "organization removed");
        Ok(())
    }
}
