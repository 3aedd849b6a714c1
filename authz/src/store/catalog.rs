//! What authz keeps besides requests and rules: the asset-identifier map (an asset manager's
//! identifiers → csap path patterns, so requests may name assets as workflow management knows
//! them) and the organizations that take part (with what the production delegates to each).
//! Both engines implement [`Catalog`]; neither table is read inside a decision.

use serde::{Deserialize, Serialize};

use super::StoreError;

/// One entry of the asset-identifier map: the OMC identifier `{identifierScope: scope,
/// identifierValue: value}` names the assets at `path` (a pattern of `csap_policy::glob`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AssetMapping {
    pub scope: String,
    pub value: String,
    pub path: String,
}

/// An organization (CSAP Part 1 §8): a vendor whose people take part, and which of
/// authentication, authorization and asset protection the production delegates to it. The
/// flags are recorded and shown; nothing acts on them yet.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Organization {
    pub name: String,
    pub authentication: bool,
    pub authorization: bool,
    pub asset_protection: bool,
    pub created_at: i64,
}

#[async_trait::async_trait]
pub trait Catalog: Send + Sync + 'static {
    /// Adds or replaces map entries, all in one transaction; returns how many.
    async fn put_asset_mappings(&self, entries: Vec<AssetMapping>) -> Result<usize, StoreError>;
    /// Every map entry, by scope then value.
    async fn asset_mappings(&self) -> Result<Vec<AssetMapping>, StoreError>;
    /// The entries of these (scope, value) identifiers that exist.
    async fn lookup_assets(
        &self,
        ids: Vec<(String, String)>,
    ) -> Result<Vec<AssetMapping>, StoreError>;
    /// Adds an organization; false (and nothing written) if the name exists.
    async fn add_organization(&self, org: Organization) -> Result<bool, StoreError>;
    /// Every organization, by name.
    async fn organizations(&self) -> Result<Vec<Organization>, StoreError>;
    async fn organization(&self, name: &str) -> Result<Option<Organization>, StoreError>;
    /// Removes an organization; false if it did not exist.
    async fn remove_organization(&self, name: &str) -> Result<bool, StoreError>;
}
