use super::*;
use crate::kernel::mountinfo::parse_mountinfo;

const TABLE: &[u8] = b"1 0 254:1 / / rw - ext4 /dev/vda rw\n\
    10 1 0:40 / /t rw - tmpfs tmpfs rw\n\
    11 10 0:41 / /t/rootfs rw - overlay overlay rw,lowerdir=/t/l\n\
    12 11 0:42 / /t/rootfs/tmp rw - tmpfs tmpfs rw\n\
    13 11 0:40 /vol /t/rootfs/vol rw - tmpfs tmpfs rw\n\
    14 11 254:1 /srv/data /t/rootfs/data rw - ext4 /dev/vda rw\n\
    15 11 0:42 / /t/rootfs/run rw - tmpfs tmpfs rw\n";

fn same(m: &[MountEntry]) -> MountTables<'_> {
    MountTables {
        unit: m,
        daemon: m,
        daemon_inside: &[],
    }
}

fn id(p: &Path) -> PathBuf {
    p.to_path_buf()
}

fn st(dev: (u32, u32), legacy: u64) -> PathStat {
    PathStat {
        dev: libc::makedev(dev.0, dev.1),
        mnt_id_legacy: legacy,
        mnt_id: 1000 + legacy,
        ino: 2,
    }
}

#[test]
fn filesystem_marks_inside_the_unit_mount_marks_for_shared_filesystems() {
    let mounts = parse_mountinfo(TABLE).unwrap();
    let paths = vec![
        (PathBuf::from("/t/rootfs"), st((0, 41), 11)),
        (PathBuf::from("/t/rootfs/tmp"), st((0, 42), 12)),
        (PathBuf::from("/t/rootfs/vol"), st((0, 40), 13)),
        (PathBuf::from("/t/rootfs/data"), st((254, 1), 14)),
        (PathBuf::from("/t/rootfs/run"), st((0, 42), 15)),
    ];
    let plan = plan_marks(&paths, &same(&mounts), &|p| p.to_path_buf()).unwrap();
    let kinds: Vec<(&str, MarkKind)> = plan
        .iter()
        .map(|m| (m.path.to_str().unwrap(), m.kind))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("/t/rootfs", MarkKind::Filesystem),
            ("/t/rootfs/tmp", MarkKind::Filesystem),
            // the base tmpfs is also mounted at /t, outside the unit
            ("/t/rootfs/vol", MarkKind::Mount),
            // a bind mount of a host directory on the root filesystem
            ("/t/rootfs/data", MarkKind::Mount),
            // /run shares /tmp's filesystem: one filesystem mark covers both
        ]
    );
}

/// A container's namespace before pivot_root, as `/proc/<pid>/mountinfo` shows it: a
/// copy of the host's mounts plus the container's own.
const CONTAINER: &[u8] = b"200 199 254:1 / / rw - ext4 /dev/vda rw\n\
    201 200 0:60 / /run/c/1/rootfs rw - overlay overlay rw,lowerdir=/var/l/2:/var/l/1\n\
    202 201 0:60 / /run/c/1/rootfs rw - overlay overlay rw,lowerdir=/var/l/2:/var/l/1\n\
    203 202 0:61 / /run/c/1/rootfs/dev rw - tmpfs tmpfs rw\n\
    204 202 0:62 / /run/c/1/rootfs/proc rw - proc proc rw\n\
    205 203 0:61 /null /run/c/1/rootfs/proc/keys rw - tmpfs tmpfs rw\n\
    206 202 254:1 /etc/hosts /run/c/1/rootfs/etc/hosts ro - ext4 /dev/vda rw\n\
    207 202 0:63 / /run/c/1/rootfs/run/secrets rw - tmpfs tmpfs rw\n\
    208 200 0:70 / /run/c/2/rootfs rw - overlay overlay rw,lowerdir=/var/l/9\n";
/// The daemon's (host) namespace: the rootfs mounted by containerd, a kubelet tmpfs.
const HOST: &[u8] = b"1 0 254:1 / / rw - ext4 /dev/vda rw\n\
    2 1 0:60 / /run/c/1/rootfs rw - overlay overlay rw,lowerdir=/var/l/2:/var/l/1\n\
    3 1 0:63 / /var/lib/kubelet/pods/p/volumes/secret rw - tmpfs tmpfs rw\n\
    4 1 0:70 / /run/c/2/rootfs rw - overlay overlay rw,lowerdir=/var/l/9\n";

#[test]
fn container_mounts_are_discovered_and_classified() {
    let ns = parse_mountinfo(CONTAINER).unwrap();
    let host = parse_mountinfo(HOST).unwrap();
    let rootfs = Path::new("/run/c/1/rootfs");
    let found = discover_mounts(&ns, rootfs);
    let shown: Vec<&str> = found.iter().map(|p| p.to_str().unwrap()).collect();
    assert_eq!(
        shown,
        vec![
            "/run/c/1/rootfs",
            "/run/c/1/rootfs/dev",
            "/run/c/1/rootfs/proc/keys",
            "/run/c/1/rootfs/etc/hosts",
            "/run/c/1/rootfs/run/secrets",
        ]
    );
    let by_path = |p: &Path| -> (u64, (u32, u32)) {
        let e = ns.iter().rev().find(|m| m.mount_point == p).unwrap();
        (e.mount_id, (libc::major(e.dev), libc::minor(e.dev)))
    };
    let paths: Vec<(PathBuf, PathStat)> = found
        .iter()
        .map(|p| {
            let (id, dev) = by_path(p);
            (p.clone(), st(dev, id))
        })
        .collect();
    let inside = vec![rootfs.to_path_buf()];
    let tables = MountTables {
        unit: &ns,
        daemon: &host,
        daemon_inside: &inside,
    };
    let access = |p: &Path| Path::new("/proc/42/root").join(p.strip_prefix("/").unwrap());
    let plan = plan_marks(&paths, &tables, &access).unwrap();
    let kinds: Vec<(&str, MarkKind)> = plan
        .iter()
        .map(|m| (m.path.to_str().unwrap(), m.kind))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("/proc/42/root/run/c/1/rootfs", MarkKind::Filesystem),
            ("/proc/42/root/run/c/1/rootfs/dev", MarkKind::Filesystem),
            // a host file bind-mounted in: only that mount
            ("/proc/42/root/run/c/1/rootfs/etc/hosts", MarkKind::Mount),
            // /proc/keys is the /dev tmpfs again: covered by its filesystem mark
            // a kubelet tmpfs also mounted on the host: only the container's mount
            ("/proc/42/root/run/c/1/rootfs/run/secrets", MarkKind::Mount),
        ]
    );
}

#[test]
fn host_root_and_non_mount_points_are_refused() {
    let mounts = parse_mountinfo(TABLE).unwrap();
    assert_eq!(
        plan_marks(
            &[(PathBuf::from("/"), st((254, 1), 1))],
            &same(&mounts),
            &id
        ),
        Err(PlanError::HostRoot { path: "/".into() })
    );
    assert_eq!(
        plan_marks(
            &[(PathBuf::from("/srv"), st((254, 1), 1))],
            &same(&mounts),
            &id
        ),
        Err(PlanError::HostRoot {
            path: "/srv".into()
        })
    );
    assert_eq!(
        plan_marks(
            &[(PathBuf::from("/t/rootfs/bin"), st((0, 41), 11))],
            &same(&mounts),
            &id
        ),
        Err(PlanError::NotAMountPoint {
            path: "/t/rootfs/bin".into()
        })
    );
    assert!(matches!(
        plan_marks(
            &[(PathBuf::from("/x"), st((0, 99), 99))],
            &same(&mounts),
            &id
        ),
        Err(PlanError::UnknownMount { .. })
    ));
}

#[test]
fn attribution_prefers_mount_marks() {
    let mut r = Registry::default();
    let base = Arc::new(Baseline::new(vec![], vec![], 0, vec![]));
    let mk = |id: &str, marks| Unit {
        id: id.into(),
        image_key: vec![],
        image_name: None,
        k8s: K8sContext::default(),
        pid: None,
        mode: Mode::Enforce,
        baseline: base.clone(),
        marks,
        cache: VerdictCache::new(4),
        counters: UnitCounters::default(),
        allow: Allowed::default(),
        last_deny: None,
        records: Default::default(),
    };
    let fs = PlannedMark {
        path: "/a".into(),
        kind: MarkKind::Filesystem,
        dev: 5,
        mnt_id: 50,
        fstype: "tmpfs".into(),
        sb_dev: 0,
    };
    let mnt = PlannedMark {
        path: "/b".into(),
        kind: MarkKind::Mount,
        dev: 5,
        mnt_id: 51,
        fstype: "tmpfs".into(),
        sb_dev: 0,
    };
    let a = r.insert(mk("a", vec![fs.clone()]));
    let b = r.insert(mk("b", vec![mnt.clone()]));
    let file = |dev, mnt_id| FileStat {
        dev,
        mnt_id,
        ..Default::default()
    };
    assert_eq!(r.attribute(&file(5, 50)).map(|x| x.unit), Some(a));
    assert_eq!(
        r.attribute(&file(5, 51)),
        Some(Attribution {
            unit: b,
            via: MarkKind::Mount
        })
    );
    assert_eq!(r.attribute(&file(6, 50)), None);
    assert_eq!(r.conflict(&[fs]), Some(a));
    r.remove(a);
    assert_eq!(r.attribute(&file(5, 50)), None);
    assert_eq!(r.find_id("b"), Some(b));
}
