// SPDX-License-Identifier: GPL-2.0
/* driftlock's mapping gate (BPF LSM).
 *
 * fanotify sees execs; it does not see code mapped without one (LD_PRELOAD, ld.so.preload,
 * dlopen, `ld.so /tmp/x` mapping the program itself). This program refuses a PROT_EXEC
 * mapping of a file on an armed unit's filesystem unless the daemon put that file in
 * `allowed` (its content was judged allowed), refuses an exec whose main binary is one of
 * the units' loaders (a PT_INTERP loader is never the main binary), and drops a file from
 * `allowed` the moment it is opened for writing or truncated.
 *
 * Each write-open or truncate of a watched file also advances its `generation`, and an
 * `allowed` entry holds the generation the daemon read before it judged the content: an
 * entry made from a judgement older than the last write never admits a mapping, whatever
 * the order in which the daemon's update and the write arrive. While a writer holds the
 * file open (`writers`), no mapping is admitted either (exec has ETXTBSY for this).
 *
 * A volume a unit marks by mount is shared with the host (`tracked`): its files are judged
 * only for the processes of the armed containers that see it (`volumes`, by PID namespace and
 * device), and only once a container wrote them: a container's write-open or truncate there
 * makes the file's `generation` entry, a host's write only advances one that exists. Such a
 * file maps only when admitted; one no container wrote since arming maps (its content came
 * from the host or from before the container, and its exec is judged by content as every
 * exec is). If that record cannot be kept (the map is full), the volume turns strict: every
 * mapping of it by those containers must be admitted.
 *
 * Keys are the kernel's own: the superblock's s_dev (major << 20 | minor) and the inode
 * number, as the file's f_inode has them (for an overlay file: the overlay's).
 *
 * Code that never touches a file is judged by the task's scope (an armed container's PID
 * namespace, `scopes`): with SCOPE_WX (an image without a JIT runtime) a file mapping is
 * never writable and executable at once or one after the other (no PROT_EXEC added to a
 * private file mapping that is or was written, no PROT_WRITE added to an executable one,
 * no writable-and-executable mapping); with SCOPE_ANON (and no runtime that makes
 * closures or JIT code either) no anonymous or memfd memory is made executable; with
 * SCOPE_PROC_MEM no /proc/<pid>/mem is opened for writing (the DDexec technique writes
 * code through it) and no process is attached with ptrace (PTRACE_POKETEXT writes code
 * into it; process_vm_writev needs the same right); with SCOPE_FOREIGN no file is exec'd
 * or mapped executable from a filesystem no armed unit marked (a tmpfs, overlay or fuse
 * the container mounted in a user and mount namespace of its own, whose copies of the
 * container's mounts also carry no fanotify mark; a detached mount), and a file a
 * container wrote on a volume is exec'd only once judged (through such a copy no mark
 * sees the exec). */
#include "kernel_types.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#define PROT_WRITE 0x2
#define PROT_EXEC 0x4
#define VM_WRITE 0x2
#define VM_EXEC 0x4
#define VM_SHARED 0x8
#define PROC_SUPER_MAGIC 0x9fa0
#define FMODE_WRITE 0x2
#define EPERM 1

/* Unit modes in `watched` and in the low byte of `scopes`. */
#define MODE_ENFORCE 1
#define MODE_AUDIT 2
#define SCOPE_MODE_MASK 0xff
/* Scope flags above the mode byte. */
#define SCOPE_WX (1u << 8)
#define SCOPE_PROC_MEM (1u << 9)
#define SCOPE_ANON (1u << 10)
#define SCOPE_FOREIGN (1u << 11)

/* Event kinds sent to the daemon. */
#define KIND_MMAP 1
#define KIND_MPROTECT 2
#define KIND_LOADER_EXEC 3
#define KIND_MEMFD 4
#define KIND_WX 5
#define KIND_ANON_EXEC 6
#define KIND_PROC_MEM 7
#define KIND_PTRACE 8
#define KIND_FOREIGN 9
#define KIND_VOLUME_EXEC 10
#define PTRACE_MODE_ATTACH 0x02
#define MAX_PID_LEVELS 8

struct file_key {
	u64 dev;
	u64 ino;
};

/* What the daemon records of a refusal; the process's name and parent are taken here, as
 * a process refused this way often exits before the daemon reads /proc. */
struct gate_event {
	u32 kind;
	u32 mode;
	u64 dev;
	u64 ino;
	u32 pid;
	u32 tgid;
	u32 denied;
	u32 scope;
	u32 ppid;
	/* What was asked: the protection (low byte), the mapping's flags before (VM_READ..
	 * VM_SHARED, next byte), DETAIL_WRITTEN and DETAIL_MPROTECT. */
	u32 detail;
	char comm[16];
};

#define DETAIL_WRITTEN (1u << 16)
#define DETAIL_MPROTECT (1u << 17)
#define DETAIL_EXEC (1u << 18)

/* `tracked` flags: a container's write could not be recorded (a map was full). */
#define TRACK_STRICT 2

struct volume_key {
	u32 inum;
	u32 pad;
	u64 dev;
};

/* Devices of armed units' filesystems -> mode. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, u64);
	__type(value, u32);
} watched SEC(".maps");

/* Devices of volumes units mark by mount (shared with the host) -> 1 | TRACK_STRICT. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, u64);
	__type(value, u32);
} tracked SEC(".maps");

/* (PID namespace of an armed container, device of a volume it marks by mount) -> mode. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct volume_key);
	__type(value, u32);
} volumes SEC(".maps");

/* Files whose content was judged allowed -> the generation judged. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 20);
	__type(key, struct file_key);
	__type(value, u64);
} allowed SEC(".maps");

/* Write-opens and truncates of watched files, per file. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 20);
	__type(key, struct file_key);
	__type(value, u64);
} generation SEC(".maps");

/* Open writers of watched files, per file. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 18);
	__type(key, struct file_key);
	__type(value, u64);
} writers SEC(".maps");

/* Files whose content is one of the units' dynamic loaders. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct file_key);
	__type(value, u8);
} loaders SEC(".maps");

/* PID namespaces (inode numbers) of armed containers -> mode | SCOPE_* flags: their
 * processes may not exec memfds, and (by flag) make memory-only code. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, u32);
	__type(value, u32);
} scopes SEC(".maps");

/* [0]: the device of the kernel's internal shmem mount (memfds, shared anonymous memory). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, u64);
} shmem_dev SEC(".maps");

/* Counters: [0] mappings checked, [1] refused, [2] would refuse, [3] entries dropped. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 8);
	__type(key, u32);
	__type(value, u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

static __always_inline void count(u32 i)
{
	u64 *n = bpf_map_lookup_elem(&counters, &i);
	if (n)
		__sync_fetch_and_add(n, 1);
}

static __always_inline bool key_of(struct file *file, struct file_key *key)
{
	struct inode *inode;
	if (!file)
		return false;
	inode = BPF_CORE_READ(file, f_inode);
	if (!inode)
		return false;
	key->dev = BPF_CORE_READ(inode, i_sb, s_dev);
	key->ino = BPF_CORE_READ(inode, i_ino);
	return true;
}

static __always_inline void report_detail(u32 kind, u32 mode, struct file_key *key, bool denied,
					  u32 scope, u32 detail)
{
	struct gate_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	u64 id = bpf_get_current_pid_tgid();
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	if (!e)
		return;
	e->kind = kind;
	e->mode = mode;
	e->dev = key->dev;
	e->ino = key->ino;
	e->pid = (u32)id;
	e->tgid = id >> 32;
	e->denied = denied;
	e->scope = scope;
	e->ppid = BPF_CORE_READ(task, real_parent, tgid);
	e->detail = detail;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
}

static __always_inline void report(u32 kind, u32 mode, struct file_key *key, bool denied)
{
	report_detail(kind, mode, key, denied, 0, 0);
}

static __always_inline bool admitted(struct file_key *key)
{
	u64 *judged = bpf_map_lookup_elem(&allowed, key);
	u64 *gen, *w;
	if (!judged)
		return false;
	gen = bpf_map_lookup_elem(&generation, key);
	if (*judged != (gen ? *gen : 0))
		return false;
	w = bpf_map_lookup_elem(&writers, key);
	return !w || *w == 0;
}

/* The mode of the armed container whose PID namespace (or an ancestor of it) the current
 * task is in, if any. The active namespace cannot be changed by the task. */
static __always_inline u32 *container_scope(u32 *scope_inum)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct pid *pid = BPF_CORE_READ(task, thread_pid);
	unsigned int level;
	if (!pid)
		return NULL;
	level = BPF_CORE_READ(pid, level);
	for (int i = 0; i < MAX_PID_LEVELS; i++) {
		struct upid up = {};
		u32 inum;
		u32 *mode;
		if (i > level)
			break;
		bpf_probe_read_kernel(&up, sizeof(up), &pid->numbers[i]);
		if (!up.ns)
			continue;
		inum = BPF_CORE_READ(up.ns, ns.inum);
		mode = bpf_map_lookup_elem(&scopes, &inum);
		if (mode) {
			*scope_inum = inum;
			return mode;
		}
	}
	return NULL;
}

/* A refusal by scope: refused in enforce mode, reported in both. */
static __always_inline int scope_refuses(u32 kind, u32 scope, u32 inum, struct file_key *key,
					 u32 detail)
{
	u32 mode = scope & SCOPE_MODE_MASK;
	count(0);
	if (mode == MODE_ENFORCE) {
		count(1);
		report_detail(kind, mode, key, true, inum, detail);
		return -EPERM;
	}
	count(2);
	report_detail(kind, mode, key, false, inum, detail);
	return 0;
}

/* Code from a filesystem no armed unit marked (neither watched nor tracked), by a
 * container's process: refused where its scope says so. */
static __always_inline int judge_foreign(struct file_key *key, u32 detail)
{
	u32 inum = 0;
	u32 *scope = container_scope(&inum);
	if (!scope || !(*scope & SCOPE_FOREIGN))
		return 0;
	return scope_refuses(KIND_FOREIGN, *scope, inum, key, detail);
}

/* A mapping (or exec) of a file on a volume shared with the host: judged for the processes
 * of the armed containers that mark it, once a container wrote the file (see the top). On
 * a filesystem no unit marked, judged by `judge_foreign` when `foreign`. */
static __always_inline int judge_volume(struct file_key *key, u32 kind, bool foreign)
{
	struct volume_key vk = {};
	u32 inum = 0;
	u32 *track, *scope, *mode;
	track = bpf_map_lookup_elem(&tracked, &key->dev);
	if (!track)
		return foreign ? judge_foreign(key, kind == KIND_VOLUME_EXEC ? DETAIL_EXEC : 0) : 0;
	scope = container_scope(&inum);
	if (!scope)
		return 0;
	vk.inum = inum;
	vk.dev = key->dev;
	mode = bpf_map_lookup_elem(&volumes, &vk);
	if (!mode)
		return 0;
	count(0);
	if (admitted(key))
		return 0;
	if (!(*track & TRACK_STRICT) && !bpf_map_lookup_elem(&generation, key) &&
	    !bpf_map_lookup_elem(&writers, key))
		return 0;
	if (*mode == MODE_ENFORCE) {
		count(1);
		report_detail(kind, *mode, key, true, inum, 0);
		return -EPERM;
	}
	count(2);
	report_detail(kind, *mode, key, false, inum, 0);
	return 0;
}

/* 0: allowed; -EPERM: refuse. `exec`: the file is a program being exec'd (not a mapping). */
static __always_inline int judge_key(struct file_key *k, u32 kind, bool exec)
{
	struct file_key key = *k;
	u32 zero = 0, inum = 0;
	u32 *mode, *scope;
	u64 *shm;
	shm = bpf_map_lookup_elem(&shmem_dev, &zero);
	if (shm && *shm && key.dev == *shm) {
		/* A memfd exec'd by a container's process (fileless execution: always refused),
		 * or one mapped executable (refused where the image has no JIT runtime: .NET maps
		 * its code through a memfd). */
		scope = container_scope(&inum);
		if (!scope || !(exec || (*scope & SCOPE_ANON)))
			return 0;
		return scope_refuses(KIND_MEMFD, *scope, inum, &key, 0);
	}
	mode = bpf_map_lookup_elem(&watched, &key.dev);
	if (!mode)
		/* Not for mprotect: before 6.6 an overlay file's mapping holds the layer's file,
		 * on a filesystem no unit marks. */
		return judge_volume(&key, kind, kind == KIND_MMAP);
	count(0);
	if (admitted(&key))
		return 0;
	if (*mode == MODE_ENFORCE) {
		count(1);
		report(kind, *mode, &key, true);
		return -EPERM;
	}
	count(2);
	report(kind, *mode, &key, false);
	return 0;
}

static __always_inline int judge_mapping(struct file *file, u32 kind)
{
	struct file_key key = {};
	if (!key_of(file, &key))
		return 0;
	return judge_key(&key, kind, false);
}

SEC("lsm/mmap_file")
int BPF_PROG(driftlock_mmap_file, struct file *file, unsigned long reqprot,
	     unsigned long prot, unsigned long flags, int ret)
{
	struct file_key key = {};
	u32 inum = 0;
	u32 *scope;
	bool anon;
	if (ret)
		return ret;
	if (!(prot & PROT_EXEC))
		return 0;
	/* What the program asked for (`prot` may add PROT_EXEC for READ_IMPLIES_EXEC). */
	if (reqprot & PROT_EXEC) {
		scope = container_scope(&inum);
		/* Anonymous memory has no file. The hook's argument is tested through a probe
		 * read: the verifier takes the argument itself for never NULL (and drops the
		 * branch), which it is for anonymous mappings. */
		anon = !BPF_CORE_READ(file, f_inode);
		if (scope) {
			if (anon && (*scope & SCOPE_ANON))
				return scope_refuses(KIND_ANON_EXEC, *scope, inum, &key,
						     reqprot & 0xff);
			if (!anon && (reqprot & PROT_WRITE) && (*scope & SCOPE_WX)) {
				key_of(file, &key);
				return scope_refuses(KIND_WX, *scope, inum, &key, reqprot & 0xff);
			}
		}
	}
	return judge_mapping(file, KIND_MMAP);
}

/* The key of the file a mapping holds, as its process opened it. A mapping of an overlay
 * file holds the layer's file (since 6.6 a backing file, embedded in a struct backing_file
 * with the overlay path the process opened), while the daemon's entries are keyed by the
 * overlay inode. FMODE_BACKING is bit 25 up to 6.13 and bit 24 after the fsnotify rework
 * (which stable kernels also took: Debian's 6.12.117 has 24), so either bit is accepted
 * and the follow is kept only when it lands on an overlay dentry: on any other file the
 * read is of unrelated memory (probe reads fail safely) or of another filesystem, and the
 * file's own key is used. */
#define FMODE_BACKING_BITS ((1u << 24) | (1u << 25))
#define OVERLAYFS_SUPER_MAGIC 0x794c7630

static __always_inline bool mapped_key_of(struct file *file, struct file_key *key)
{
	struct dentry *dentry;
	struct inode *inode;
	if (!file)
		return false;
	if (bpf_core_type_exists(struct backing_file) &&
	    (BPF_CORE_READ(file, f_mode) & FMODE_BACKING_BITS)) {
		dentry = BPF_CORE_READ((struct backing_file *)file, user_path.dentry);
		if (dentry && BPF_CORE_READ(dentry, d_sb, s_magic) == OVERLAYFS_SUPER_MAGIC) {
			inode = BPF_CORE_READ(dentry, d_inode);
			if (inode) {
				key->dev = BPF_CORE_READ(inode, i_sb, s_dev);
				key->ino = BPF_CORE_READ(inode, i_ino);
				return true;
			}
		}
	}
	return key_of(file, key);
}

/* W^X for a container without a JIT runtime: code is never written after it is mapped,
 * and written memory never becomes code. The loader's own pattern (data mapped
 * PROT_READ|PROT_WRITE, RELRO made read-only) adds no PROT_EXEC and passes. */
static __always_inline int strict_mprotect(struct vm_area_struct *vma, unsigned long reqprot,
					   u32 scope, u32 inum)
{
	struct file_key key = {};
	unsigned long vm_flags = BPF_CORE_READ(vma, vm_flags);
	struct file *file = BPF_CORE_READ(vma, vm_file);
	bool adds_exec = (reqprot & PROT_EXEC) && !(vm_flags & VM_EXEC);
	bool wants_wx = (reqprot & PROT_EXEC) && (reqprot & PROT_WRITE);
	bool written = BPF_CORE_READ(vma, anon_vma) != 0;
	u32 detail = (reqprot & 0xff) | ((vm_flags & 0xff) << 8) | DETAIL_MPROTECT |
		     (written ? DETAIL_WRITTEN : 0);
	if (!file) {
		if ((adds_exec || wants_wx) && (scope & SCOPE_ANON))
			return scope_refuses(KIND_ANON_EXEC, scope, inum, &key, detail);
		return 0;
	}
	if (!(scope & SCOPE_WX))
		return 0;
	mapped_key_of(file, &key);
	if (wants_wx)
		return scope_refuses(KIND_WX, scope, inum, &key, detail);
	if (vm_flags & VM_SHARED)
		return 0;
	/* Written (copy-on-write pages) or writable, then executable. */
	if (adds_exec && ((vm_flags & VM_WRITE) || written))
		return scope_refuses(KIND_WX, scope, inum, &key, detail);
	/* Executable, then writable. */
	if ((reqprot & PROT_WRITE) && (vm_flags & VM_EXEC))
		return scope_refuses(KIND_WX, scope, inum, &key, detail);
	return 0;
}

SEC("lsm/file_mprotect")
int BPF_PROG(driftlock_file_mprotect, struct vm_area_struct *vma, unsigned long reqprot,
	     unsigned long prot, int ret)
{
	struct file_key key = {};
	u32 inum = 0;
	u32 *scope;
	int refused;
	if (ret)
		return ret;
	if (reqprot & (PROT_EXEC | PROT_WRITE)) {
		scope = container_scope(&inum);
		if (scope && (*scope & (SCOPE_WX | SCOPE_ANON))) {
			refused = strict_mprotect(vma, reqprot, *scope, inum);
			if (refused)
				return refused;
		}
	}
	if (!(prot & PROT_EXEC))
		return 0;
	if (BPF_CORE_READ(vma, vm_flags) & VM_EXEC)
		return 0;
	if (!mapped_key_of(BPF_CORE_READ(vma, vm_file), &key))
		return 0;
	return judge_key(&key, KIND_MPROTECT, false);
}

SEC("lsm/bprm_check_security")
int BPF_PROG(driftlock_bprm_check, struct linux_binprm *bprm, int ret)
{
	struct file_key key = {};
	u32 *mode;
	if (ret)
		return ret;
	u32 zero = 0;
	u64 *shm;
	if (!key_of(BPF_CORE_READ(bprm, file), &key))
		return 0;
	/* Fileless execution (a memfd exec'd) by a container's process: refused here with a
	 * clean error, where vm.memfd_noexec is missing (before 6.3) or not set, rather than at
	 * the loader's mapping after the exec's point of no return (SIGSEGV). */
	shm = bpf_map_lookup_elem(&shmem_dev, &zero);
	if (shm && *shm && key.dev == *shm)
		return judge_key(&key, KIND_MEMFD, true);
	mode = bpf_map_lookup_elem(&watched, &key.dev);
	if (!mode)
		/* Off the unit's own filesystems: a filesystem no unit marked, or a file a
		 * container wrote on a volume and exec'd where no mark saw it. (The loader rule for
		 * volumes is fanotify's.) */
		return judge_volume(&key, KIND_VOLUME_EXEC, true);
	if (!bpf_map_lookup_elem(&loaders, &key))
		return 0;
	if (*mode == MODE_ENFORCE) {
		report(KIND_LOADER_EXEC, *mode, &key, true);
		return -EPERM;
	}
	report(KIND_LOADER_EXEC, *mode, &key, false);
	return 0;
}

/* A write is coming: advance the file's generation and drop its entry. False if the
 * generation could not be recorded (the map is full). */
static __always_inline bool written(struct file_key *key)
{
	u64 one = 1, *gen;
	bool kept = true;
	gen = bpf_map_lookup_elem(&generation, key);
	if (gen)
		__sync_fetch_and_add(gen, 1);
	else
		kept = bpf_map_update_elem(&generation, key, &one, BPF_ANY) == 0;
	if (bpf_map_delete_elem(&allowed, key) == 0)
		count(3);
	return kept;
}

/* A write to a file on a tracked volume: a container's makes the file's record (if it
 * cannot, the volume turns strict); the host's advances only a record that exists. */
static __always_inline void volume_written(struct file_key *key, u32 *track, bool by_container)
{
	u64 *gen;
	if (by_container) {
		/* A plain store: the flag is only ever set (5.10 has no atomic or). */
		if (!written(key))
			*track = *track | TRACK_STRICT;
		return;
	}
	gen = bpf_map_lookup_elem(&generation, key);
	if (gen)
		__sync_fetch_and_add(gen, 1);
	if (bpf_map_delete_elem(&allowed, key) == 0)
		count(3);
}

static __always_inline void writer_opened(struct file_key *key)
{
	u64 one = 1, *w;
	w = bpf_map_lookup_elem(&writers, key);
	if (w)
		__sync_fetch_and_add(w, 1);
	else
		bpf_map_update_elem(&writers, key, &one, BPF_ANY);
}

static __always_inline void writer_released(struct file_key *key)
{
	u64 *w = bpf_map_lookup_elem(&writers, key);
	if (w) {
		if (*w <= 1)
			bpf_map_delete_elem(&writers, key);
		else
			__sync_fetch_and_sub(w, 1);
	}
}

/* True for a /proc/<pid>/mem (or /proc/<pid>/task/<tid>/mem) file. */
static __always_inline bool is_proc_mem(struct file *file)
{
	char name[4] = {};
	const unsigned char *p;
	if (BPF_CORE_READ(file, f_inode, i_sb, s_magic) != PROC_SUPER_MAGIC)
		return false;
	p = BPF_CORE_READ(file, f_path.dentry, d_name.name);
	if (!p || bpf_probe_read_kernel(name, sizeof(name), p))
		return false;
	return name[0] == 'm' && name[1] == 'e' && name[2] == 'm' && name[3] == 0;
}

SEC("lsm/file_open")
int BPF_PROG(driftlock_file_open, struct file *file, int ret)
{
	struct file_key key = {};
	u32 inum = 0;
	u32 *scope, *track;
	if (ret)
		return ret;
	if (!(BPF_CORE_READ(file, f_mode) & FMODE_WRITE))
		return 0;
	if (is_proc_mem(file)) {
		/* Code written into a process through /proc/<pid>/mem (FOLL_FORCE ignores the
		 * mapping's protection): refused to a container's processes. */
		scope = container_scope(&inum);
		if (scope && (*scope & SCOPE_PROC_MEM))
			return scope_refuses(KIND_PROC_MEM, *scope, inum, &key, 0);
		return 0;
	}
	if (!key_of(file, &key))
		return 0;
	if (bpf_map_lookup_elem(&watched, &key.dev)) {
		written(&key);
		writer_opened(&key);
		return 0;
	}
	track = bpf_map_lookup_elem(&tracked, &key.dev);
	if (!track)
		return 0;
	volume_written(&key, track, container_scope(&inum) != NULL);
	writer_opened(&key);
	return 0;
}

SEC("lsm/file_free_security")
int BPF_PROG(driftlock_file_free, struct file *file)
{
	struct file_key key = {};
	u32 *track;
	if (!(BPF_CORE_READ(file, f_mode) & FMODE_WRITE))
		return 0;
	if (!key_of(file, &key))
		return 0;
	/* A judgement made while this writer was open may have read content it then changed
	 * (through the fd, or a shared mapping): it dies with the writer. (On a volume the
	 * release may run in another task than the open: only an existing record advances.) */
	if (bpf_map_lookup_elem(&watched, &key.dev)) {
		written(&key);
	} else {
		track = bpf_map_lookup_elem(&tracked, &key.dev);
		if (!track)
			return 0;
		volume_written(&key, track, false);
	}
	writer_released(&key);
	return 0;
}

SEC("lsm/path_truncate")
int BPF_PROG(driftlock_path_truncate, const struct path *path, int ret)
{
	struct file_key key = {};
	struct inode *inode;
	u32 inum = 0;
	u32 *track;
	if (ret)
		return ret;
	inode = BPF_CORE_READ(path, dentry, d_inode);
	if (!inode)
		return 0;
	key.dev = BPF_CORE_READ(inode, i_sb, s_dev);
	key.ino = BPF_CORE_READ(inode, i_ino);
	if (bpf_map_lookup_elem(&watched, &key.dev)) {
		written(&key);
		return 0;
	}
	track = bpf_map_lookup_elem(&tracked, &key.dev);
	if (track)
		volume_written(&key, track, container_scope(&inum) != NULL);
	return 0;
}

/* Attaching to another process (PTRACE_ATTACH/SEIZE, process_vm_writev, another's
 * /proc/<pid>/mem): refused to a container's processes unless a rule lets debuggers. A
 * process's access to itself never reaches this hook. */
SEC("lsm/ptrace_access_check")
int BPF_PROG(driftlock_ptrace_access_check, struct task_struct *child, unsigned int mode, int ret)
{
	struct file_key key = {};
	u32 inum = 0;
	u32 *scope;
	if (ret)
		return ret;
	if (!(mode & PTRACE_MODE_ATTACH))
		return 0;
	scope = container_scope(&inum);
	if (scope && (*scope & SCOPE_PROC_MEM))
		return scope_refuses(KIND_PTRACE, *scope, inum, &key, 0);
	return 0;
}

/* PTRACE_TRACEME: a container's process offering itself to its parent as a tracee. */
SEC("lsm/ptrace_traceme")
int BPF_PROG(driftlock_ptrace_traceme, struct task_struct *parent, int ret)
{
	struct file_key key = {};
	u32 inum = 0;
	u32 *scope;
	if (ret)
		return ret;
	scope = container_scope(&inum);
	if (scope && (*scope & SCOPE_PROC_MEM))
		return scope_refuses(KIND_PTRACE, *scope, inum, &key, 0);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
