//! Node permissions: an owner, per-domain grants and the access of
//! everyone else; dom0 may do anything.

use abi::store::{Access, GRANTS_MAX};
use abi::xen::errno::Errno;
use abi::{DOM0, DomainId};

/// One per-domain grant in a node's [`Permissions`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    /// The domain granted access.
    pub domain: DomainId,
    /// What it may do.
    pub access: Access,
}

/// A node's permissions: the owner has full access, a domain with a grant
/// has the grant's access, every other domain has `others`; dom0 always
/// has full access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permissions {
    /// The owning domain: full access; its quota is charged.
    pub owner: DomainId,
    /// The access of domains that are neither the owner nor granted.
    pub others: Access,
    grants: [Grant; GRANTS_MAX],
    grant_count: u8,
}

impl Permissions {
    /// Owned by `owner`, nothing for anyone else.
    pub const fn owned_by(owner: DomainId) -> Permissions {
        Permissions {
            owner,
            others: Access::None,
            grants: [Grant { domain: 0, access: Access::None }; GRANTS_MAX],
            grant_count: 0,
        }
    }

    /// The per-domain grants.
    pub fn grants(&self) -> &[Grant] {
        &self.grants[..(self.grant_count as usize).min(GRANTS_MAX)]
    }

    /// Adds a grant: [`Errno::Einval`] if `domain` already has one,
    /// [`Errno::E2big`] if the node holds [`GRANTS_MAX`] already.
    pub fn grant(&mut self, domain: DomainId, access: Access) -> Result<(), Errno> {
        if self.grants().iter().any(|grant| grant.domain == domain) {
            return Err(Errno::Einval);
        }
        let count = self.grants().len();
        if count == GRANTS_MAX {
            return Err(Errno::E2big);
        }
        self.grants[count] = Grant { domain, access };
        self.grant_count += 1;
        Ok(())
    }

    /// Removes `domain`'s grant, if any.
    pub(super) fn revoke(&mut self, domain: DomainId) {
        let count = self.grants().len();
        if let Some(at) = self.grants().iter().position(|grant| grant.domain == domain) {
            self.grants.copy_within(at + 1..count, at);
            self.grant_count -= 1;
        }
    }

    /// What `domain` may do.
    pub fn access(&self, domain: DomainId) -> Access {
        if domain == DOM0 || domain == self.owner {
            return Access::Both;
        }
        self.grants().iter().find(|grant| grant.domain == domain).map_or(self.others, |grant| grant.access)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Quota;
    use crate::store::test_support::*;
    use abi::xen::io::store::XsdSockmsgType as T;

    #[test]
    fn a_guest_cannot_reach_another_home() {
        let mut store = small();
        store.introduce_domain(1, Quota::GUEST).unwrap();
        store.introduce_domain(2, Quota::GUEST).unwrap();
        store.write(2, "secret", "42").unwrap();
        let path = "/local/domain/2/secret";
        assert_eq!(store.read(1, path), Err(Errno::Eacces));
        assert_eq!(store.write(1, path, "0"), Err(Errno::Eacces));
        assert_eq!(store.write(1, "/local/domain/2/new", "0"), Err(Errno::Eacces));
        assert_eq!(store.mkdir(1, "/local/domain/2/new"), Err(Errno::Eacces));
        assert_eq!(store.remove(1, path), Err(Errno::Eacces));
        assert!(store.directory(1, "/local/domain/2").is_err());
        assert_eq!(store.get_permissions(1, path), Err(Errno::Eacces));
        assert_eq!(store.set_permissions(1, path, &Permissions::owned_by(1)), Err(Errno::Eacces));
        // Nor the rest of the tree.
        assert_eq!(store.write(1, "/elsewhere", "x"), Err(Errno::Eacces));
        assert!(store.directory(1, "/local/domain").is_err());
        assert_eq!(store.read(2, path), Ok("42"));
        check_consistent(&*store);
    }

    #[test]
    fn the_backend_tree_needs_a_grant() {
        let mut store = small();
        store.introduce_domain(5, Quota::GUEST).unwrap();
        let dir = "/local/domain/0/backend/vbd/5/0";
        store.mkdir(DOM0, dir).unwrap();
        store.write(DOM0, "/local/domain/0/backend/vbd/5/0/state", "1").unwrap();
        assert_eq!(store.read(5, "/local/domain/0/backend/vbd/5/0/state"), Err(Errno::Eacces));
        let mut permissions = Permissions::owned_by(DOM0);
        permissions.grant(5, Access::Read).unwrap();
        store.set_permissions(DOM0, dir, &permissions).unwrap();
        // The grant is per node: the existing child is still closed ...
        assert_eq!(store.read(5, "/local/domain/0/backend/vbd/5/0/state"), Err(Errno::Eacces));
        // ... and new children inherit it.
        store.write(DOM0, "/local/domain/0/backend/vbd/5/0/sectors", "2048").unwrap();
        assert_eq!(store.read(5, "/local/domain/0/backend/vbd/5/0/sectors"), Ok("2048"));
        assert_eq!(names(&*store, 5, dir), ["state", "sectors"]);
        assert_eq!(store.write(5, "/local/domain/0/backend/vbd/5/0/sectors", "1"), Err(Errno::Eacces));
        assert_eq!(store.write(5, "/local/domain/0/backend/vbd/5/0/new", "1"), Err(Errno::Eacces));
        assert_eq!(store.remove(5, dir), Err(Errno::Eacces));
        // Another guest has no grant.
        store.introduce_domain(6, Quota::GUEST).unwrap();
        assert_eq!(store.read(6, "/local/domain/0/backend/vbd/5/0/sectors"), Err(Errno::Eacces));
        let seen = store.get_permissions(5, "/local/domain/0/backend/vbd/5/0/sectors").unwrap();
        assert_eq!((seen.owner, seen.grants()), (DOM0, &[Grant { domain: 5, access: Access::Read }][..]));
    }

    #[test]
    fn a_write_grant_lets_a_guest_create_nodes_it_owns() {
        let mut store = small();
        store.introduce_domain(5, Quota::GUEST).unwrap();
        store.mkdir(DOM0, "/shared").unwrap();
        let mut permissions = Permissions::owned_by(DOM0);
        permissions.grant(5, Access::Write).unwrap();
        store.set_permissions(DOM0, "/shared", &permissions).unwrap();
        let before = store.domain(5).unwrap().usage.nodes;
        store.write(5, "/shared/a/b", "v").unwrap();
        let made = store.get_permissions(DOM0, "/shared/a/b").unwrap();
        assert_eq!(made.owner, 5, "a guest owns what it creates");
        assert_eq!(made.grants(), permissions.grants(), "and inherits the parent's grants");
        assert_eq!(store.domain(5).unwrap().usage.nodes, before + 2);
        // Write-only on /shared: no listing.
        assert!(store.directory(5, "/shared").is_err());
        check_consistent(&*store);
    }

    #[test]
    fn only_the_owner_changes_permissions_and_only_dom0_changes_owners() {
        let mut store = small();
        store.introduce_domain(1, Quota::GUEST).unwrap();
        store.introduce_domain(2, Quota::GUEST).unwrap();
        store.write(1, "mine", "x").unwrap();
        let mut open = Permissions::owned_by(1);
        open.others = Access::Read;
        assert_eq!(store.set_permissions(1, "mine", &open), Ok(()));
        assert_eq!(store.read(2, "/local/domain/1/mine"), Ok("x"));
        assert_eq!(store.write(2, "/local/domain/1/mine", "y"), Err(Errno::Eacces));
        // Giving it away is refused.
        assert_eq!(store.set_permissions(1, "mine", &Permissions::owned_by(2)), Err(Errno::Eacces));
        // A write grant is not ownership.
        let mut shared = Permissions::owned_by(1);
        shared.grant(2, Access::Both).unwrap();
        store.set_permissions(1, "mine", &shared).unwrap();
        assert_eq!(store.write(2, "/local/domain/1/mine", "y"), Ok(()));
        assert_eq!(store.set_permissions(2, "/local/domain/1/mine", &Permissions::owned_by(2)), Err(Errno::Eacces));
        // dom0 may move it; the node moves between quotas.
        let (one, two) = (store.domain(1).unwrap().usage, store.domain(2).unwrap().usage);
        store.set_permissions(DOM0, "/local/domain/1/mine", &Permissions::owned_by(2)).unwrap();
        assert_eq!(store.domain(1).unwrap().usage.nodes, one.nodes - 1);
        assert_eq!(store.domain(2).unwrap().usage.nodes, two.nodes + 1);
        let mut full = Permissions::owned_by(1);
        for domain in 0..GRANTS_MAX as u32 {
            full.grant(10 + domain, Access::Read).unwrap();
        }
        assert_eq!(full.grant(99, Access::Read), Err(Errno::E2big));
        assert_eq!(full.grant(10, Access::Write), Err(Errno::Einval), "one grant per domain");
        check_consistent(&*store);
    }

    #[test]
    fn a_guest_cannot_change_what_dom0_says_about_it() {
        let mut store = small();
        store.introduce_domain(4, Quota::GUEST).unwrap();
        // A node dom0 writes in a home with a plain write is the guest's:
        // how `name` and `domid` were written, and the guest rewrote them.
        store.write(DOM0, "/local/domain/4/scratch", "dom0's").unwrap();
        assert_eq!(store.write(4, "scratch", "mine"), Ok(()));
        let usage = store.domain(4).unwrap().usage;
        store.write_read_only("/local/domain/4/name", "web", 4).unwrap();
        store.write_read_only("/local/domain/4/domid", "4", 4).unwrap();
        assert_eq!(store.domain(4).unwrap().usage, usage, "dom0's nodes are not charged to the guest");
        assert_eq!(store.read(4, "name"), Ok("web"));
        assert_eq!(store.read(4, "/local/domain/4/domid"), Ok("4"));
        assert_eq!(store.write(4, "name", "dom0"), Err(Errno::Eacces));
        assert_eq!(store.remove(4, "name"), Err(Errno::Eacces));
        assert_eq!(store.set_permissions(4, "name", &Permissions::owned_by(4)), Err(Errno::Eacces));
        assert_eq!(store.mkdir(4, "name"), Err(Errno::Eacces));
        // Nor by removing its home, which it owns, with them.
        assert_eq!(store.remove(4, "/local/domain/4"), Err(Errno::Eacces));
        assert_eq!(store.read(4, "name"), Ok("web"));
        // What is its own below goes as before, with everything below it.
        store.write(4, "data/a/b", "1").unwrap();
        assert_eq!(store.remove(4, "data"), Ok(()));
        assert_eq!(store.read(4, "data/a/b"), Err(Errno::Enoent));
        // Another guest sees nothing of it; dom0 still removes the home.
        store.introduce_domain(5, Quota::GUEST).unwrap();
        assert_eq!(store.read(5, "/local/domain/4/name"), Err(Errno::Eacces));
        store.remove_domain(4).unwrap();
        assert_eq!(store.read(DOM0, "/local/domain/4/name"), Err(Errno::Enoent));
        check_consistent(&*store);
    }

    /// Every operation a guest sends about another domain's tree, and
    /// about the tree outside its home, is answered the same whether the
    /// node exists or not: no operation is an existence oracle.
    #[test]
    fn refusals_do_not_reveal_whether_a_node_exists() {
        let mut store = small();
        for domain in [5, 6] {
            store.introduce_domain(domain, Quota::GUEST).unwrap();
        }
        store.write(DOM0, "/local/domain/6/device/vif/0/state", "1").unwrap();
        store.write(DOM0, "/local/domain/0/backend/vif/6/0/state", "2").unwrap();
        let mut permissions = Permissions::owned_by(DOM0);
        permissions.grant(5, Access::Read).unwrap();
        store.mkdir(DOM0, "/local/domain/0/backend/vif/5/0").unwrap();
        store.set_permissions(DOM0, "/local/domain/0/backend/vif/5/0", &permissions).unwrap();
        // (existing, missing) pairs guest 5 may not see.
        let pairs = [
            ("/local/domain/6/device/vif/0", "/local/domain/6/device/vbd/0"),
            ("/local/domain/6/device/vif/0/state", "/local/domain/6/device/vif/1/state"),
            ("/local/domain/6", "/local/domain/7"),
            ("/local/domain/0/backend/vif/6/0", "/local/domain/0/backend/vif/7/0"),
            ("/local/domain/0/backend/vif/6", "/local/domain/0/backend/vbd/5"),
            ("/local", "/nothing"),
        ];
        let operations = [T::Read, T::Mkdir, T::Write, T::Rm, T::Directory, T::GetPerms, T::SetPerms];
        for (existing, missing) in pairs {
            for op in operations {
                let ask = |store: &mut Small, path: &str| {
                    let fields: &[&str] = match op {
                        T::Write => &[path, "x"],
                        T::SetPerms => &[path, "b5"],
                        _ => &[path],
                    };
                    call(store, 5, op, fields)
                };
                assert_eq!(ask(&mut store, existing), Err(Errno::Eacces), "{op:?} {existing}");
                assert_eq!(ask(&mut store, missing), Err(Errno::Eacces), "{op:?} {missing}");
            }
        }
        // Where the guest may look, missing nodes are reported as missing.
        assert_eq!(store.read(5, "/local/domain/0/backend/vif/5/0/nothing"), Err(Errno::Enoent));
        assert_eq!(store.read(5, "nothing"), Err(Errno::Enoent));
        // Nothing was changed by the refused requests.
        assert_eq!(store.read(DOM0, "/local/domain/6/device/vif/0/state"), Ok("1"));
        assert_eq!(store.read(DOM0, "/local/domain/6/device/vbd"), Err(Errno::Enoent));
        assert_eq!(store.read(DOM0, "/local/domain/7"), Err(Errno::Enoent));
        check_consistent(&*store);
    }
}
