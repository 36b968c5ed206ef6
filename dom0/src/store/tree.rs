//! The tree: nodes linked to their parent, first child and next sibling
//! by index, and the operations on them as the protocol has them.

use abi::store::{Access, VALUE_MAX};
use abi::xen::errno::Errno;
use abi::{DOM0, DomainId};

use crate::store::arena::EXTENT_HEADER;
use crate::store::paths::{check_text, components, resolve};
use crate::store::{Permissions, Store};

/// The root node's index. No node links to it as a child or sibling, so 0
/// also means "none" in those links.
pub(super) const ROOT: u16 = 0;

#[derive(Clone, Copy)]
pub(super) struct Node {
    /// In the tree (the root is always, whatever this says).
    pub(super) used: bool,
    pub(super) parent: u16,
    /// 0 = no children.
    pub(super) first_child: u16,
    /// 0 = last child.
    pub(super) next_sibling: u16,
    pub(super) name_len: u16,
    pub(super) value_len: u16,
    /// Offset of the extent (name, then value) in the arena; meaningless
    /// when both lengths are 0 (only the root can have no name).
    pub(super) extent: u32,
    pub(super) permissions: Permissions,
    /// Bumped when the value, permissions or list of children change;
    /// fresh when the node is made (see `transactions.rs`).
    pub(super) generation: u64,
    /// Bumped with any change at or below the node.
    pub(super) subtree_generation: u64,
}

impl Node {
    pub(super) const EMPTY: Node = Node {
        used: false,
        parent: ROOT,
        first_child: 0,
        next_sibling: 0,
        name_len: 0,
        value_len: 0,
        extent: 0,
        permissions: Permissions::owned_by(DOM0),
        generation: 0,
        subtree_generation: 0,
    };

    pub(super) fn has_extent(&self) -> bool {
        self.name_len != 0 || self.value_len != 0
    }

    /// Arena bytes the node takes.
    pub(super) fn size(&self) -> usize {
        if self.has_extent() { EXTENT_HEADER + self.name_len as usize + self.value_len as usize } else { 0 }
    }
}

impl<const NODES: usize, const ARENA: usize, const WATCHES: usize, const DOMAINS: usize>
    Store<NODES, ARENA, WATCHES, DOMAINS>
{
    /// Notes a change of `node`'s value, permissions or children: a new
    /// generation for it, and for the subtrees of it and its ancestors.
    pub(super) fn changed(&mut self, node: u16) {
        self.generation += 1;
        let generation = self.generation;
        self.nodes[node as usize].generation = generation;
        let mut at = node;
        loop {
            self.nodes[at as usize].subtree_generation = generation;
            if at == ROOT {
                break;
            }
            at = self.nodes[at as usize].parent;
        }
    }

    fn child(&self, parent: u16, name: &[u8]) -> Option<u16> {
        let mut child = self.nodes[parent as usize].first_child;
        while child != 0 {
            if self.name(child) == name {
                return Some(child);
            }
            child = self.nodes[child as usize].next_sibling;
        }
        None
    }

    /// Follows an absolute path as far as it exists: the deepest existing
    /// node and how many components it took.
    pub(super) fn walk(&self, path: &str) -> (u16, usize) {
        let mut node = ROOT;
        let mut depth = 0;
        for name in components(path) {
            match self.child(node, name) {
                Some(child) => node = child,
                None => break,
            }
            depth += 1;
        }
        (node, depth)
    }

    pub(super) fn lookup(&self, path: &str) -> Option<u16> {
        let (node, depth) = self.walk(path);
        (depth == components(path).count()).then_some(node)
    }

    /// Follows `path` for `caller` without telling it what it may not
    /// know: the deepest existing node on the path and how many components
    /// it took (as [`Self::walk`]). A caller with no access at all to that node is
    /// refused with [`Errno::Eacces`] whether the rest of the path
    /// exists or not, so a node it may not see and a missing one below
    /// it are refused alike, by every operation (otherwise a guest could
    /// enumerate other guests' devices). Where it may look, a missing
    /// child is no secret: `Directory` would list it.
    fn locate(&self, caller: DomainId, path: &str) -> Result<(u16, usize), Errno> {
        let (node, depth) = self.walk(path);
        if self.nodes[node as usize].permissions.access(caller) == Access::None {
            return Err(Errno::Eacces);
        }
        Ok((node, depth))
    }

    /// Looks up an existing node that `caller` needs `read` or write access
    /// to (refused alike whether it exists, where the caller may not look:
    /// see [`Self::locate`]).
    fn find(&self, caller: DomainId, path: &str, read: bool) -> Result<u16, Errno> {
        let (node, depth) = self.locate(caller, path)?;
        if depth != components(path).count() {
            return Err(Errno::Enoent);
        }
        let access = self.nodes[node as usize].permissions.access(caller);
        if (read && !access.can_read()) || (!read && !access.can_write()) {
            return Err(Errno::Eacces);
        }
        Ok(node)
    }

    /// Write (`value` given) or mkdir (`None`) on a resolved path.
    /// Mkdir of an existing node needs write access to it, as a write does:
    /// its answer must not depend on existence where the caller may not look.
    pub(super) fn create(&mut self, caller: DomainId, path: &str, value: Option<&[u8]>) -> Result<(), Errno> {
        let (deepest, depth) = self.locate(caller, path)?;
        let total = components(path).count();
        let parent = self.nodes[deepest as usize];
        if depth == total {
            if !parent.permissions.access(caller).can_write() {
                return Err(Errno::Eacces);
            }
            let Some(value) = value else { return Ok(()) };
            self.replace_value(caller, deepest, value)?;
            let permissions = self.nodes[deepest as usize].permissions;
            self.fire(path, &permissions, false);
            return Ok(());
        }
        if !parent.permissions.access(caller).can_write() {
            return Err(Errno::Eacces);
        }
        let value = value.unwrap_or(&[]);
        let new_nodes = total - depth;
        let bytes: usize =
            components(path).skip(depth).map(|name| EXTENT_HEADER + name.len()).sum::<usize>() + value.len();
        // dom0 creates on behalf of the directory's owner; a guest owns
        // what it creates.
        let owner = if caller == DOM0 { parent.permissions.owner } else { caller };
        self.check_quota(caller, owner, new_nodes, bytes as i64)?;
        if NODES - 1 - self.node_count < new_nodes {
            return Err(Errno::Enospc);
        }
        self.reserve(bytes)?;
        let mut node = deepest;
        for (index, name) in components(path).skip(depth).enumerate() {
            let value = if index + 1 == new_nodes { value } else { &[] };
            node = self.new_child(node, name, value, owner);
        }
        self.charge(owner, new_nodes as i64, bytes as i64);
        let permissions = self.nodes[node as usize].permissions;
        self.fire(path, &permissions, false);
        Ok(())
    }

    /// Appends a child to `parent` (node slot and arena room checked).
    fn new_child(&mut self, parent: u16, name: &[u8], value: &[u8], owner: DomainId) -> u16 {
        let Some(index) = (1..NODES).find(|&index| !self.nodes[index].used) else { return parent };
        let index = index as u16;
        let extent = self.place(index, name, value);
        let mut permissions = self.nodes[parent as usize].permissions;
        permissions.owner = owner;
        self.nodes[index as usize] = Node {
            used: true,
            parent,
            first_child: 0,
            next_sibling: 0,
            name_len: name.len() as u16,
            value_len: value.len() as u16,
            extent,
            permissions,
            generation: 0,
            subtree_generation: 0,
        };
        self.node_count += 1;
        let first = self.nodes[parent as usize].first_child;
        if first == 0 {
            self.nodes[parent as usize].first_child = index;
        } else {
            let mut last = first;
            while self.nodes[last as usize].next_sibling != 0 {
                last = self.nodes[last as usize].next_sibling;
            }
            self.nodes[last as usize].next_sibling = index;
        }
        self.changed(parent);
        self.changed(index);
        index
    }

    fn replace_value(&mut self, caller: DomainId, node: u16, value: &[u8]) -> Result<(), Errno> {
        let old = self.nodes[node as usize];
        let name_len = old.name_len as usize;
        let length = name_len + value.len();
        let new_size = if length == 0 { 0 } else { EXTENT_HEADER + length };
        let delta = new_size as i64 - old.size() as i64;
        self.check_quota(caller, old.permissions.owner, 0, delta)?;
        self.reserve(new_size)?;
        // Compaction may have moved the old extent.
        let old = self.nodes[node as usize];
        let mut extent = old.extent;
        if new_size != 0 {
            // The new extent copies the name from the old one, which lives
            // in the arena too, so it is built in place rather than by `place`.
            let offset = self.arena_end;
            self.arena[offset..offset + 2].copy_from_slice(&node.to_le_bytes());
            self.arena[offset + 2..offset + 4].copy_from_slice(&(length as u16).to_le_bytes());
            let data = offset + EXTENT_HEADER;
            if old.has_extent() {
                let name = old.extent as usize + EXTENT_HEADER;
                self.arena.copy_within(name..name + name_len, data);
            }
            self.arena[data + name_len..data + length].copy_from_slice(value);
            self.arena_end += new_size;
            self.arena_live += new_size;
            extent = offset as u32;
        }
        if old.has_extent() {
            self.release(old.extent);
        }
        self.nodes[node as usize].extent = extent;
        self.nodes[node as usize].value_len = value.len() as u16;
        self.charge(old.permissions.owner, 0, delta);
        self.changed(node);
        Ok(())
    }

    fn free_node(&mut self, index: u16) {
        let node = self.nodes[index as usize];
        if node.has_extent() {
            self.release(node.extent);
        }
        self.charge(node.permissions.owner, -1, -(node.size() as i64));
        self.nodes[index as usize] = Node::EMPTY;
        self.node_count -= 1;
    }

    /// Whether `caller` may write `top` and every node below it.
    pub(super) fn subtree_writable(&self, caller: DomainId, top: u16) -> bool {
        // Depth first along the links: down to the first child, else on to
        // the next sibling of the nearest node below `top` that has one.
        let mut node = top;
        loop {
            if !self.nodes[node as usize].permissions.access(caller).can_write() {
                return false;
            }
            let first = self.nodes[node as usize].first_child;
            if first != 0 {
                node = first;
                continue;
            }
            loop {
                if node == top {
                    return true;
                }
                let next = self.nodes[node as usize].next_sibling;
                if next != 0 {
                    node = next;
                    break;
                }
                node = self.nodes[node as usize].parent;
            }
        }
    }

    /// Unlinks `top` from its parent and frees it with everything below.
    pub(super) fn delete_subtree(&mut self, top: u16) {
        let parent = self.nodes[top as usize].parent;
        let next = self.nodes[top as usize].next_sibling;
        if self.nodes[parent as usize].first_child == top {
            self.nodes[parent as usize].first_child = next;
        } else {
            let mut sibling = self.nodes[parent as usize].first_child;
            while sibling != 0 && self.nodes[sibling as usize].next_sibling != top {
                sibling = self.nodes[sibling as usize].next_sibling;
            }
            if sibling != 0 {
                self.nodes[sibling as usize].next_sibling = next;
            }
        }
        self.changed(parent);
        // Free leaves from the top down until only `top` is left: each
        // round descends along first children to a leaf and unlinks it.
        loop {
            let mut leaf = top;
            while self.nodes[leaf as usize].first_child != 0 {
                leaf = self.nodes[leaf as usize].first_child;
            }
            if leaf == top {
                break;
            }
            let parent = self.nodes[leaf as usize].parent;
            self.nodes[parent as usize].first_child = self.nodes[leaf as usize].next_sibling;
            self.free_node(leaf);
        }
        self.free_node(top);
    }

    // ---- Operations, as the protocol has them ----

    /// A node's value.
    pub fn read(&self, caller: DomainId, path: &str) -> Result<&str, Errno> {
        let path = resolve(caller, path)?;
        let node = self.find(caller, &path, true)?;
        core::str::from_utf8(self.value(node)).map_err(|_| Errno::Einval)
    }

    /// Sets a node's value, creating it and its missing parents.
    pub fn write(&mut self, caller: DomainId, path: &str, value: &str) -> Result<(), Errno> {
        check_text(value, VALUE_MAX)?;
        let path = resolve(caller, path)?;
        self.create(caller, &path, Some(value.as_bytes()))
    }

    /// Creates a node with an empty value unless it exists.
    pub fn mkdir(&mut self, caller: DomainId, path: &str) -> Result<(), Errno> {
        let path = resolve(caller, path)?;
        self.create(caller, &path, None)
    }

    /// Removes a node and its subtree.
    pub fn remove(&mut self, caller: DomainId, path: &str) -> Result<(), Errno> {
        let path = resolve(caller, path)?;
        if path.as_str() == "/" {
            return Err(Errno::Einval);
        }
        let node = self.find(caller, &path, false)?;
        if !self.subtree_writable(caller, node) {
            return Err(Errno::Eacces);
        }
        let permissions = self.nodes[node as usize].permissions;
        self.fire(&path, &permissions, true);
        self.delete_subtree(node);
        Ok(())
    }

    /// dom0 writes a node it keeps owning that `reader` may read but not
    /// change or remove (not even by removing a parent it owns): facts
    /// about a guest in its home, like its `name` and `domid`. Missing
    /// parents are created as [`Self::write`] creates them.
    pub fn write_read_only(&mut self, path: &str, value: &str, reader: DomainId) -> Result<(), Errno> {
        self.write(DOM0, path, value)?;
        let mut permissions = Permissions::owned_by(DOM0);
        if reader != DOM0 {
            permissions.grant(reader, Access::Read)?;
        }
        self.set_permissions(DOM0, path, &permissions)
    }

    /// The names of a node's children, in creation order.
    pub fn directory(&self, caller: DomainId, path: &str) -> Result<impl Iterator<Item = &str> + '_, Errno> {
        let path = resolve(caller, path)?;
        let node = self.find(caller, &path, true)?;
        let mut child = self.nodes[node as usize].first_child;
        Ok(core::iter::from_fn(move || {
            if child == 0 {
                return None;
            }
            let name = self.name(child);
            child = self.nodes[child as usize].next_sibling;
            // Names are checked path components: ASCII.
            Some(core::str::from_utf8(name).unwrap_or(""))
        }))
    }

    /// A node's permissions.
    pub fn get_permissions(&self, caller: DomainId, path: &str) -> Result<Permissions, Errno> {
        let path = resolve(caller, path)?;
        let node = self.find(caller, &path, true)?;
        Ok(self.nodes[node as usize].permissions)
    }

    /// Replaces a node's permissions: the owner or dom0 only, and only dom0
    /// may change the owner.
    pub fn set_permissions(&mut self, caller: DomainId, path: &str, permissions: &Permissions) -> Result<(), Errno> {
        let path = resolve(caller, path)?;
        let (node, depth) = self.locate(caller, &path)?;
        if depth != components(&path).count() {
            return Err(Errno::Enoent);
        }
        let old = self.nodes[node as usize];
        if caller != DOM0 && (old.permissions.owner != caller || permissions.owner != caller) {
            return Err(Errno::Eacces);
        }
        if permissions.owner != old.permissions.owner {
            self.charge(old.permissions.owner, -1, -(old.size() as i64));
            self.charge(permissions.owner, 1, old.size() as i64);
        }
        self.nodes[node as usize].permissions = *permissions;
        self.changed(node);
        self.fire(&path, permissions, false);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Quota;
    use crate::store::paths::is_at_or_below;
    use crate::store::test_support::*;
    use crate::test_random::XorShift;
    use abi::store::{PATH_MAX, TOKEN_MAX};
    use std::collections::BTreeMap;
    use std::string::{String, ToString};

    #[test]
    fn relative_and_absolute_paths_name_the_same_node() {
        let mut store = small();
        store.introduce_domain(3, Quota::GUEST).unwrap();
        store.write(3, "device/vbd/0/state", "1").unwrap();
        assert_eq!(store.read(3, "/local/domain/3/device/vbd/0/state"), Ok("1"));
        assert_eq!(store.read(3, "device/vbd/0/state"), Ok("1"));
        assert_eq!(store.read(DOM0, "/local/domain/3/device/vbd/0/state"), Ok("1"));
        // Relative for dom0 means dom0's home.
        assert_eq!(store.read(DOM0, "device/vbd/0/state"), Err(Errno::Enoent));
        assert_eq!(store.read(3, "device"), Ok(""), "parents are created with empty values");
        assert_eq!(names(&*store, 3, "device/vbd"), ["0"]);
        check_consistent(&*store);
    }

    #[test]
    fn limits_apply_to_the_resolved_path() {
        let mut store = small();
        store.introduce_domain(3, Quota::GUEST).unwrap();
        let prefix = "/local/domain/3/";
        let relative = "a".repeat(PATH_MAX - prefix.len());
        assert_eq!(store.write(3, &relative, "x"), Ok(()));
        let relative = "a".repeat(PATH_MAX - prefix.len() + 1);
        assert_eq!(store.write(3, &relative, "x"), Err(Errno::E2big));
        let mut absolute = String::from(prefix);
        absolute.push_str(&"b".repeat(PATH_MAX + 1 - prefix.len()));
        assert_eq!(store.write(3, &absolute, "x"), Err(Errno::E2big));
        assert_eq!(store.write(3, "v", &"x".repeat(VALUE_MAX)), Ok(()));
        assert_eq!(store.write(3, "v", &"x".repeat(VALUE_MAX + 1)), Err(Errno::E2big));
        assert_eq!(store.write(3, "v", "a\0b"), Err(Errno::Einval));
        assert_eq!(store.watch(3, "v", &"t".repeat(TOKEN_MAX + 1)), Err(Errno::E2big));
        for bad in ["", "/a/", "a//b", "a/../b", "/a b", "é"] {
            assert_eq!(store.write(3, bad, "x"), Err(Errno::Einval), "{bad:?}");
        }
    }

    #[test]
    fn tree_operations() {
        let mut store = small();
        assert_eq!(store.node_count(), 1);
        store.write(DOM0, "/a/b/c", "1").unwrap();
        store.write(DOM0, "/a/b/d", "2").unwrap();
        store.write(DOM0, "/a/e", "3").unwrap();
        assert_eq!(store.mkdir(DOM0, "/a/b"), Ok(()), "mkdir of an existing node is fine");
        assert_eq!(store.read(DOM0, "/a/b/c"), Ok("1"), "and changes nothing");
        store.mkdir(DOM0, "/a/f").unwrap();
        assert_eq!(store.read(DOM0, "/a/f"), Ok(""));
        assert_eq!(names(&*store, DOM0, "/a"), ["b", "e", "f"]);
        assert_eq!(names(&*store, DOM0, "/"), ["a"]);
        store.write(DOM0, "/a/b/c", "longer value").unwrap();
        assert_eq!(store.read(DOM0, "/a/b/c"), Ok("longer value"));
        store.write(DOM0, "/a/b/c", "").unwrap();
        assert_eq!(store.read(DOM0, "/a/b/c"), Ok(""));
        store.write(DOM0, "/", "root value").unwrap();
        assert_eq!(store.read(DOM0, "/"), Ok("root value"));
        store.write(DOM0, "/", "").unwrap();
        assert_eq!(store.remove(DOM0, "/a/b"), Ok(()));
        assert_eq!(store.read(DOM0, "/a/b/c"), Err(Errno::Enoent));
        assert_eq!(store.remove(DOM0, "/a/b"), Err(Errno::Enoent));
        assert_eq!(names(&*store, DOM0, "/a"), ["e", "f"]);
        assert_eq!(store.remove(DOM0, "/"), Err(Errno::Einval));
        store.remove(DOM0, "/a").unwrap();
        assert_eq!(store.node_count(), 1);
        assert_eq!(store.arena_bytes(), 0);
        check_consistent(&*store);
    }

    #[test]
    fn the_tree_matches_a_model_through_many_changes() {
        // Random writes and removes in a small arena force compaction
        // often; every value must survive it.
        let mut store = small();
        let mut model: BTreeMap<String, String> = BTreeMap::new();
        let mut random = XorShift(0x9e37_79b9_7f4a_7c15);
        let paths = ["/a", "/a/b", "/a/b/c", "/a/d", "/e", "/e/f", "/e/f/g", "/h"];
        for step in 0..20_000 {
            let path = paths[random.below(paths.len())];
            if random.below(4) == 0 {
                let result = store.remove(DOM0, path);
                let present = model.contains_key(path);
                assert_eq!(result.is_ok(), present, "step {step}");
                model.retain(|key, _| !is_at_or_below(key.as_bytes(), path.as_bytes()));
            } else {
                let value = "z".repeat(random.below(800));
                store.write(DOM0, path, &value).unwrap();
                // Parents appear with empty values.
                let mut parent = String::new();
                for name in components(path) {
                    parent.push('/');
                    parent.push_str(core::str::from_utf8(name).unwrap());
                    model.entry(parent.clone()).or_default();
                }
                model.insert(path.to_string(), value);
            }
            for path in paths {
                assert_eq!(store.read(DOM0, path).ok(), model.get(path).map(String::as_str), "step {step}: {path}");
            }
        }
        check_consistent(&*store);
    }
}
