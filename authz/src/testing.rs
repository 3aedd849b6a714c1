//! Test support: synthetic rule sets and requests (from `csap-policy`), and a real PKI.

pub use csap_policy::synthetic::*;

/// A real certificate authority and directory for tests and benchmarks of the control plane's
/// client authentication: it issues client certificates (rcgen) and answers
/// [`crate::principal::Directory`] questions from what the test registered. Services run with
/// it over real TLS exactly as with the key server's directory.
pub mod pki {
    use std::collections::HashMap;
    use std::sync::{Arc, RwLock};

    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose, SerialNumber,
    };

    use crate::principal::{
        CertInfo, Directory, DirectoryHandle, PeerCert, Principal, Principals, Role, Standing,
        WorkflowGrant,
    };
    use crate::tls::{ClientAuth, ClientIdentity};

    /// Names a test registered, and the answer for names it did not.
    #[derive(Debug)]
    pub struct TestDirectory {
        principals: RwLock<HashMap<String, (Principal, bool)>>,
        grants: RwLock<HashMap<String, WorkflowGrant>>,
        names: RwLock<HashMap<(&'static str, String), Standing>>,
        otherwise: Standing,
    }

    impl TestDirectory {
        /// `otherwise`: the standing of every user, device and application not set explicitly
        /// (`Active` for tests about something else, `Unknown` for tests of name checks).
        pub fn new(otherwise: Standing) -> Self {
            TestDirectory {
                principals: RwLock::default(),
                grants: RwLock::default(),
                names: RwLock::default(),
                otherwise,
            }
        }

        pub fn set_user(&self, name: &str, s: Standing) {
            self.set("user", name, s)
        }
        pub fn set_device(&self, name: &str, s: Standing) {
            self.set("device", name, s)
        }
        pub fn set_application(&self, digest: &str, s: Standing) {
            self.set("application", digest, s)
        }
        pub fn set_grant(&self, workflow: &str, grant: WorkflowGrant) {
            self.grants
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(workflow.to_string(), grant);
        }

        fn set(&self, kind: &'static str, name: &str, s: Standing) {
            self.names
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert((kind, name.to_string()), s);
        }

        fn get(&self, kind: &'static str, name: &str) -> Standing {
            self.names
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&(kind, name.to_string()))
                .copied()
                .unwrap_or(self.otherwise)
        }
    }

    impl Principals for TestDirectory {
        fn principal(&self, serial: &str, common_name: &str) -> Option<Principal> {
            let map = self.principals.read().unwrap_or_else(|e| e.into_inner());
            map.get(serial)
                .filter(|(p, revoked)| !revoked && p.name == common_name)
                .map(|(p, _)| p.clone())
        }
        fn is_revoked(&self, serial: &str) -> bool {
            let map = self.principals.read().unwrap_or_else(|e| e.into_inner());
            map.get(serial).is_some_and(|(_, revoked)| *revoked)
        }
    }

    impl Directory for TestDirectory {
        fn workflow_grant(&self, name: &str) -> Option<WorkflowGrant> {
            let map = self.grants.read().unwrap_or_else(|e| e.into_inner());
            map.get(name).cloned()
        }
        fn user(&self, name: &str) -> Standing {
            self.get("user", name)
        }
        fn device(&self, name: &str) -> Standing {
            self.get("device", name)
        }
        fn application(&self, digest: &str) -> Standing {
            self.get("application", digest)
        }
    }

    /// A principal a [`TestPki`] issued: its identity (to present over TLS) and its
    /// certificate fields (to attach to in-process requests).
    #[derive(Debug, Clone)]
    pub struct Issued {
        pub identity: ClientIdentity,
        pub cert: CertInfo,
        pub principal: Principal,
    }

    /// A CA plus a [`TestDirectory`] it registers what it issues in.
    pub struct TestPki {
        ca_key: KeyPair,
        ca_cert: rcgen::Certificate,
        pub ca_pem: String,
        pub directory: Arc<TestDirectory>,
    }

    impl std::fmt::Debug for TestPki {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("TestPki").finish_non_exhaustive()
        }
    }

    fn serial() -> Vec<u8> {
        let mut s = [0u8; 16];
        getrandom::getrandom(&mut s).expect("system random number generator");
        s[0] = (s[0] & 0x7f) | 0x40;
        s.to_vec()
    }

    impl TestPki {
        pub fn new(directory: TestDirectory) -> Self {
            let ca_key = KeyPair::generate().expect("CA key");
            let mut params = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "csap test CA");
            params.distinguished_name = dn;
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            params.serial_number = Some(SerialNumber::from_slice(&serial()));
            let ca_cert = params.self_signed(&ca_key).expect("CA certificate");
            TestPki {
                ca_pem: ca_cert.pem(),
                ca_key,
                ca_cert,
                directory: Arc::new(directory),
            }
        }

        /// Issues a client certificate for `name` with `role` and registers it as active.
        pub fn issue(&self, name: &str, role: Role) -> Issued {
            let key = KeyPair::generate().expect("client key");
            let mut params = CertificateParams::new(vec![name.to_string()]).expect("params");
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, name);
            params.distinguished_name = dn;
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            let serial = serial();
            params.serial_number = Some(SerialNumber::from_slice(&serial));
            let cert = params
                .signed_by(&key, &self.ca_cert, &self.ca_key)
                .expect("client certificate");
            let principal = Principal {
                name: name.to_string(),
                role,
                serial: hex::encode(&serial),
            };
            self.directory
                .principals
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(principal.serial.clone(), (principal.clone(), false));
            Issued {
                identity: ClientIdentity {
                    cert_pem: cert.pem(),
                    key_pem: zeroize::Zeroizing::new(key.serialize_pem()),
                },
                cert: CertInfo {
                    serial: principal.serial.clone(),
                    common_name: name.to_string(),
                },
                principal,
            }
        }

        /// A certificate chaining to this CA that the directory never registered.
        pub fn issue_unregistered(&self, name: &str) -> Issued {
            let issued = self.issue(name, Role::Admin);
            self.directory
                .principals
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&issued.cert.serial);
            issued
        }

        /// Marks `issued` revoked: the next handshake and the next request refuse it.
        pub fn revoke(&self, issued: &Issued) {
            if let Some(entry) = self
                .directory
                .principals
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(&issued.cert.serial)
            {
                entry.1 = true;
            }
        }

        /// How a listener under test authenticates clients with this CA and directory.
        pub fn client_auth(&self) -> ClientAuth {
            ClientAuth {
                ca_pem: self.ca_pem.clone(),
                directory: self.directory.clone(),
                allow_anonymous: true,
                on_refusal: None,
            }
        }

        /// Makes an in-process request (`oneshot`) come from `issued`, as the TLS layer would.
        pub fn attach<B>(&self, req: &mut axum::http::Request<B>, issued: &Issued) {
            req.extensions_mut()
                .insert(DirectoryHandle(self.directory.clone()));
            req.extensions_mut().insert(PeerCert(issued.cert.clone()));
        }
    }
}
