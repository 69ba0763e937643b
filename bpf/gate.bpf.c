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
 * Keys are the kernel's own: the superblock's s_dev (major << 20 | minor) and the inode
 * number, as the file's f_inode has them (for an overlay file: the overlay's). */
#include "kernel_types.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#define PROT_EXEC 0x4
#define VM_EXEC 0x4
#define FMODE_WRITE 0x2
#define EPERM 1

/* Unit modes in `watched`. */
#define MODE_ENFORCE 1
#define MODE_AUDIT 2

/* Event kinds sent to the daemon. */
#define KIND_MMAP 1
#define KIND_MPROTECT 2
#define KIND_LOADER_EXEC 3
#define KIND_MEMFD 4
#define MAX_PID_LEVELS 8

struct file_key {
	u64 dev;
	u64 ino;
};

struct gate_event {
	u32 kind;
	u32 mode;
	u64 dev;
	u64 ino;
	u32 pid;
	u32 tgid;
	u32 denied;
	u32 pad;
};

/* Devices of armed units' filesystems -> mode. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, u64);
	__type(value, u32);
} watched SEC(".maps");

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

/* PID namespaces (inode numbers) of armed containers -> mode: their processes may not map
 * memfd or shared memory files executable (fileless code). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, u32);
	__type(value, u32);
} memfd_scopes SEC(".maps");

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

static __always_inline void report(u32 kind, u32 mode, struct file_key *key, bool denied)
{
	struct gate_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	u64 id = bpf_get_current_pid_tgid();
	if (!e)
		return;
	e->kind = kind;
	e->mode = mode;
	e->dev = key->dev;
	e->ino = key->ino;
	e->pid = (u32)id;
	e->tgid = id >> 32;
	e->denied = denied;
	e->pad = 0;
	bpf_ringbuf_submit(e, 0);
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
static __always_inline u32 *container_scope(void)
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
		mode = bpf_map_lookup_elem(&memfd_scopes, &inum);
		if (mode)
			return mode;
	}
	return NULL;
}

/* 0: allowed; -EPERM: refuse. */
static __always_inline int judge_key(struct file_key *k, u32 kind)
{
	struct file_key key = *k;
	u32 zero = 0;
	u32 *mode;
	u64 *shm;
	shm = bpf_map_lookup_elem(&shmem_dev, &zero);
	if (shm && *shm && key.dev == *shm) {
		/* A memfd or shared memory mapped executable by a container's process. */
		mode = container_scope();
		if (!mode)
			return 0;
		count(0);
		if (*mode == MODE_ENFORCE) {
			count(1);
			report(KIND_MEMFD, *mode, &key, true);
			return -EPERM;
		}
		count(2);
		report(KIND_MEMFD, *mode, &key, false);
		return 0;
	}
	mode = bpf_map_lookup_elem(&watched, &key.dev);
	if (!mode)
		return 0;
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
	return judge_key(&key, kind);
}

SEC("lsm/mmap_file")
int BPF_PROG(driftlock_mmap_file, struct file *file, unsigned long reqprot,
	     unsigned long prot, unsigned long flags, int ret)
{
	if (ret)
		return ret;
	if (!(prot & PROT_EXEC))
		return 0;
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

SEC("lsm/file_mprotect")
int BPF_PROG(driftlock_file_mprotect, struct vm_area_struct *vma, unsigned long reqprot,
	     unsigned long prot, int ret)
{
	struct file_key key = {};
	if (ret)
		return ret;
	if (!(prot & PROT_EXEC))
		return 0;
	if (BPF_CORE_READ(vma, vm_flags) & VM_EXEC)
		return 0;
	if (!mapped_key_of(BPF_CORE_READ(vma, vm_file), &key))
		return 0;
	return judge_key(&key, KIND_MPROTECT);
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
		return judge_key(&key, KIND_MEMFD);
	if (!bpf_map_lookup_elem(&loaders, &key))
		return 0;
	mode = bpf_map_lookup_elem(&watched, &key.dev);
	if (!mode)
		return 0;
	if (*mode == MODE_ENFORCE) {
		report(KIND_LOADER_EXEC, *mode, &key, true);
		return -EPERM;
	}
	report(KIND_LOADER_EXEC, *mode, &key, false);
	return 0;
}

/* A write is coming: advance the file's generation and drop its entry. */
static __always_inline void written(struct file_key *key)
{
	u64 one = 1, *gen;
	gen = bpf_map_lookup_elem(&generation, key);
	if (gen)
		__sync_fetch_and_add(gen, 1);
	else
		bpf_map_update_elem(&generation, key, &one, BPF_ANY);
	if (bpf_map_delete_elem(&allowed, key) == 0)
		count(3);
}

SEC("lsm/file_open")
int BPF_PROG(driftlock_file_open, struct file *file, int ret)
{
	struct file_key key = {};
	u64 one = 1, *w;
	if (ret)
		return ret;
	if (!(BPF_CORE_READ(file, f_mode) & FMODE_WRITE))
		return 0;
	if (!key_of(file, &key) || !bpf_map_lookup_elem(&watched, &key.dev))
		return 0;
	written(&key);
	w = bpf_map_lookup_elem(&writers, &key);
	if (w)
		__sync_fetch_and_add(w, 1);
	else
		bpf_map_update_elem(&writers, &key, &one, BPF_ANY);
	return 0;
}

SEC("lsm/file_free_security")
int BPF_PROG(driftlock_file_free, struct file *file)
{
	struct file_key key = {};
	u64 *w;
	if (!(BPF_CORE_READ(file, f_mode) & FMODE_WRITE))
		return 0;
	if (!key_of(file, &key) || !bpf_map_lookup_elem(&watched, &key.dev))
		return 0;
	/* A judgement made while this writer was open may have read content it then changed
	 * (through the fd, or a shared mapping): it dies with the writer. */
	written(&key);
	w = bpf_map_lookup_elem(&writers, &key);
	if (w) {
		if (*w <= 1)
			bpf_map_delete_elem(&writers, &key);
		else
			__sync_fetch_and_sub(w, 1);
	}
	return 0;
}

SEC("lsm/path_truncate")
int BPF_PROG(driftlock_path_truncate, const struct path *path, int ret)
{
	struct file_key key = {};
	struct inode *inode;
	if (ret)
		return ret;
	inode = BPF_CORE_READ(path, dentry, d_inode);
	if (!inode)
		return 0;
	key.dev = BPF_CORE_READ(inode, i_sb, s_dev);
	key.ino = BPF_CORE_READ(inode, i_ino);
	if (bpf_map_lookup_elem(&watched, &key.dev))
		written(&key);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
