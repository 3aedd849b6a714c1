//! [`KeyStore`] on PostgreSQL: each operation as one statement or one transaction, with the
//! follow-ups of `PgKeyStore::changed` after commits that revoked or changed the directory.

use super::*;

#[async_trait::async_trait]
impl KeyStore for PgKeyStore {
    fn read_cache(&self) -> Option<&ReadCache> {
        None
    }

    async fn license_rows(&self, want: RowsWanted<'_>) -> Result<LicenseRows, StoreError> {
        let mut client = self.client().await?;
        if want.assets.len() > 1 || want.create_scope.is_some() {
            let tx = begin_snapshot(&mut client).await?;
            let rows = keys::license_rows(&*tx, want).await?;
            tx.commit().await?;
            Ok(rows)
        } else {
            keys::license_rows(&**client, want).await
        }
    }

    fn record_audit(&self, events: Vec<AuditEvent>) -> AuditReceipt {
        self.audit.record(events)
    }

    fn record_audit_later(&self, events: Vec<AuditEvent>) {
        self.audit.record_later(events);
    }

    fn watch_directory(&self) -> Option<watch::Receiver<u64>> {
        Some(self.shared.directory.subscribe())
    }

    async fn principals(&self) -> Result<Vec<Principal>, StoreError> {
        identities::all_principals(&**self.client().await?).await
    }

    async fn add_cert(
        &self,
        principal: &Principal,
        hpke_public: Option<&str>,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        identities::insert_cert(&*tx, principal, hpke_public, now).await?;
        notify(&*tx, Change::Directory).await?;
        tx.commit().await?;
        drop(client);
        self.changed(DIRECTORY).await;
        Ok(())
    }

    async fn active_cert_exists(
        &self,
        kind: PrincipalKind,
        name: &str,
    ) -> Result<bool, StoreError> {
        identities::active_cert_exists(&**self.client().await?, kind, name).await
    }

    async fn revoke_certs(
        &self,
        kind: PrincipalKind,
        name: &str,
        now: i64,
    ) -> Result<usize, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let n = identities::revoke_certs(&*tx, kind, name, now).await?;
        notify(&*tx, Change::Directory).await?;
        tx.commit().await?;
        drop(client);
        self.changed(DIRECTORY).await;
        Ok(n)
    }

    async fn revoke_device(&self, name: &str, now: i64) -> Result<usize, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let n = identities::revoke_certs(&*tx, PrincipalKind::Device, name, now).await?;
        if n > 0 {
            revocations::record(&*tx, now, RevocationKind::Device, name, None).await?;
            sessions::end_device(&*tx, name).await?;
            notify(&*tx, Change::Directory).await?;
        }
        tx.commit().await?;
        drop(client);
        self.changed(if n > 0 { REVOKED } else { NOTHING }).await;
        Ok(n)
    }

    async fn certs(&self) -> Result<Vec<DeviceInfo>, StoreError> {
        identities::list_certs(&**self.client().await?).await
    }

    async fn device_hpke_public(&self, name: &str) -> Result<Option<String>, StoreError> {
        identities::device_hpke_public(&**self.client().await?, name).await
    }

    async fn put_workflow(
        &self,
        name: &str,
        grant: &WorkflowGrant,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        identities::put_workflow(&*tx, name, grant, now).await?;
        notify(&*tx, Change::Directory).await?;
        tx.commit().await?;
        drop(client);
        self.changed(DIRECTORY).await;
        Ok(())
    }

    async fn directory_snapshot(&self) -> Result<DirectorySnapshot, StoreError> {
        let mut client = self.client().await?;
        let tx = begin_snapshot(&mut client).await?;
        let snap = identities::directory_snapshot(&*tx).await?;
        tx.commit().await?;
        Ok(snap)
    }

    fn workflow_grant_now(&self, name: &str) -> Result<Option<WorkflowGrant>, StoreError> {
        Ok(self.shared.mirror.workflow_grant(name))
    }

    fn user_standing_now(&self, name: &str) -> Result<Standing, StoreError> {
        Ok(self.shared.mirror.user(name))
    }

    fn device_standing_now(&self, name: &str) -> Result<Standing, StoreError> {
        Ok(self.shared.mirror.device(name))
    }

    fn app_standing_now(&self, digest: &str) -> Result<Standing, StoreError> {
        Ok(self.shared.mirror.application(digest))
    }

    async fn add_user(&self, name: &str, password_hash: &str, now: i64) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        identities::add_user(&*tx, name, password_hash, now).await?;
        notify(&*tx, Change::Directory).await?;
        tx.commit().await?;
        drop(client);
        self.changed(DIRECTORY).await;
        Ok(())
    }

    async fn user(&self, name: &str) -> Result<Option<UserRow>, StoreError> {
        identities::get_user(&**self.client().await?, name).await
    }

    async fn disable_user(&self, name: &str, now: i64) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        identities::disable_user(&*tx, name).await?;
        revocations::record(&*tx, now, RevocationKind::User, name, None).await?;
        notify(&*tx, Change::Directory).await?;
        tx.commit().await?;
        drop(client);
        self.changed(REVOKED).await;
        Ok(())
    }

    async fn enable_user(&self, name: &str) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        identities::enable_user(&*tx, name).await?;
        notify(&*tx, Change::Directory).await?;
        tx.commit().await?;
        drop(client);
        self.changed(DIRECTORY).await;
        Ok(())
    }

    async fn users(&self) -> Result<Vec<UserInfo>, StoreError> {
        identities::list_users(&**self.client().await?).await
    }

    async fn register_app(&self, app: &AppInfo) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        identities::register_app(&*tx, app).await?;
        notify(&*tx, Change::Directory).await?;
        tx.commit().await?;
        drop(client);
        self.changed(DIRECTORY).await;
        Ok(())
    }

    async fn app(&self, digest: &str) -> Result<Option<AppInfo>, StoreError> {
        identities::get_app(&**self.client().await?, digest).await
    }

    async fn apps(&self) -> Result<Vec<AppInfo>, StoreError> {
        identities::list_apps(&**self.client().await?).await
    }

    async fn revoke_apps(&self, target: &RevokeTarget, now: i64) -> Result<usize, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let digests = match target {
            RevokeTarget::Digest(d) => {
                if identities::revoke_app_digest(&*tx, d, now).await? > 0 {
                    vec![d.clone()]
                } else {
                    Vec::new()
                }
            }
            RevokeTarget::NameVersion { name, version } => {
                identities::revoke_app_name_version(&*tx, name, version, now).await?
            }
        };
        for digest in &digests {
            revocations::record(&*tx, now, RevocationKind::App, digest, None).await?;
        }
        if !digests.is_empty() {
            notify(&*tx, Change::Directory).await?;
        }
        tx.commit().await?;
        drop(client);
        let n = digests.len();
        self.changed(if n > 0 { REVOKED } else { NOTHING }).await;
        Ok(n)
    }

    async fn app_digests_named(&self, name: &str) -> Result<Vec<String>, StoreError> {
        identities::app_digests_named(&**self.client().await?, name).await
    }

    async fn create_scope(
        &self,
        name: &str,
        scope_id: &[u8; 16],
        sealed: &SealedSeed,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        keys::create_scope(&*tx, name, scope_id, sealed, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn root_key_check(&self, proposed: &SealedSeed) -> Result<SealedSeed, StoreError> {
        keys::root_key_check(&**self.client().await?, proposed).await
    }

    async fn put_session(&self, row: &SessionRow, now: i64) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        sessions::put(&*tx, row, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn session(&self, id: &str) -> Result<Option<SessionRow>, StoreError> {
        sessions::get(&**self.client().await?, id).await
    }

    async fn put_identity_provider(&self, record: &ProviderRecord) -> Result<(), StoreError> {
        federation::put_identity_provider(&**self.client().await?, record).await
    }

    async fn identity_provider(
        &self,
        organization: &str,
    ) -> Result<Option<ProviderRecord>, StoreError> {
        federation::identity_provider(&**self.client().await?, organization).await
    }

    async fn identity_providers(&self) -> Result<Vec<IdentityProvider>, StoreError> {
        federation::identity_providers(&**self.client().await?).await
    }

    async fn remove_identity_provider(&self, organization: &str) -> Result<bool, StoreError> {
        federation::remove_identity_provider(&**self.client().await?, organization).await
    }

    async fn scope_info(&self, name: &str) -> Result<Option<ScopeInfo>, StoreError> {
        let mut client = self.client().await?;
        let tx = begin_snapshot(&mut client).await?;
        let info = keys::scope_info(&*tx, name).await?;
        tx.commit().await?;
        Ok(info)
    }

    async fn scope_infos(&self) -> Result<Vec<ScopeInfo>, StoreError> {
        let mut client = self.client().await?;
        let tx = begin_snapshot(&mut client).await?;
        let mut out = Vec::new();
        for name in keys::scope_names(&*tx).await? {
            out.extend(keys::scope_info(&*tx, &name).await?);
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn rotate_scope(
        &self,
        name: &str,
        now: i64,
        seal: SealVersion,
    ) -> Result<u32, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let next = keys::lock_current_version(&*tx, name).await? + 1;
        let sealed = seal(next).map_err(StoreError::Worker)?;
        keys::insert_version(&*tx, name, next, &sealed, now).await?;
        keys::set_current_version(&*tx, name, next).await?;
        tx.commit().await?;
        Ok(next)
    }

    async fn revoke_key_version(
        &self,
        name: &str,
        version: u32,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        keys::revoke_version(&*tx, name, version, now).await?;
        revocations::record(&*tx, now, RevocationKind::KeyVersion, name, Some(version)).await?;
        tx.commit().await?;
        drop(client);
        self.changed(Changed {
            revocation: true,
            directory: false,
        })
        .await;
        Ok(())
    }

    async fn assets(&self) -> Result<Vec<AssetInfo>, StoreError> {
        keys::list_assets(&**self.client().await?).await
    }

    async fn register_asset(
        &self,
        asset: &AssetInfo,
        audit: Vec<AuditEvent>,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        keys::insert_asset(&*tx, asset).await?;
        audit::lock(&*tx).await?;
        audit::insert_audit_rows(&*tx, &audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn rename_asset(
        &self,
        id: &str,
        new_path: &str,
        audit: AuditEvent,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        keys::rename_asset(&*tx, id, new_path).await?;
        audit::lock(&*tx).await?;
        audit::insert_audit_rows(&*tx, [&audit]).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn advance_generation(
        &self,
        id: &str,
        step: GenerationStep,
        generation: u32,
    ) -> Result<AssetInfo, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        match step {
            GenerationStep::Reserve => keys::reserve_generation(&*tx, id).await?,
            GenerationStep::Settle => keys::settle_generation(&*tx, id, generation).await?,
        }
        let asset = keys::get_asset(&*tx, id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("asset {id}")))?;
        tx.commit().await?;
        Ok(asset)
    }

    async fn audit_after(&self, after: i64, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        audit::audit_after(&**self.client().await?, after, limit).await
    }

    async fn audit_tail(&self, n: u32) -> Result<Vec<AuditRecord>, StoreError> {
        audit::audit_tail(&**self.client().await?, n).await
    }

    async fn audit_chain_after(&self, after: i64, limit: u32) -> Result<Vec<ChainRow>, StoreError> {
        audit::chain_rows_after(&**self.client().await?, after, Some(limit)).await
    }

    async fn audit_query(&self, filter: AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        let mut client = self.client().await?;
        let tx = begin_snapshot(&mut client).await?;
        let found = audit::audit_query(&*tx, &filter).await?;
        tx.commit().await?;
        Ok(found)
    }

    async fn store_shipped(
        &self,
        device: &str,
        spool: &str,
        records: &[MountAuditRecord],
    ) -> Result<Shipped, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        audit::lock(&*tx).await?;
        let done = audit::insert_shipped(&*tx, device, spool, records).await?;
        tx.commit().await?;
        Ok(done)
    }

    async fn revocations(
        &self,
        since: Option<i64>,
        limit: u32,
    ) -> Result<RevocationsResponse, StoreError> {
        let mut client = self.client().await?;
        let tx = begin_snapshot(&mut client).await?;
        let out = revocations::read(&*tx, since, limit).await?;
        tx.commit().await?;
        Ok(out)
    }

    fn watch_revocations(&self) -> watch::Receiver<u64> {
        self.revocations.subscribe()
    }

    async fn maintain(&self) {
        // PostgreSQL keeps itself (autovacuum); the listener and writer are tasks of their own.
        std::future::pending::<()>().await
    }

    async fn close(&self) {
        self.audit.stop().await;
        self.listener.abort();
    }
}
