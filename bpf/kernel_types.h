/* The few kernel types the gate reads, declared with preserve_access_index: clang records
 * each field access as a CO-RE relocation, and the loader resolves it against the running
 * kernel's BTF, so one object works on every kernel with BTF (6.1, 6.12, ...). */
#ifndef DRIFTLOCK_KERNEL_TYPES_H
#define DRIFTLOCK_KERNEL_TYPES_H

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed char __s8;
typedef signed short __s16;
typedef signed int __s32;
typedef signed long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u64 __be64;
typedef __u32 __wsum;
typedef __u8 u8;
typedef __u16 u16;
typedef __u32 u32;
typedef __u64 u64;
typedef __u32 dev_t;
typedef __u32 fmode_t;
typedef _Bool bool;
#define true 1
#define false 0

enum bpf_map_type {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_RINGBUF = 27,
};

enum {
	BPF_ANY = 0,
};

struct super_block {
	dev_t s_dev;
	unsigned long s_magic;
} __attribute__((preserve_access_index));

struct inode {
	unsigned long i_ino;
	struct super_block *i_sb;
} __attribute__((preserve_access_index));

struct qstr {
	const unsigned char *name;
} __attribute__((preserve_access_index));

struct dentry {
	struct inode *d_inode;
	struct super_block *d_sb;
	struct qstr d_name;
} __attribute__((preserve_access_index));

struct path {
	struct dentry *dentry;
} __attribute__((preserve_access_index));

struct file {
	struct inode *f_inode;
	fmode_t f_mode;
	struct path f_path;
} __attribute__((preserve_access_index));

/* 6.6 and later: the file an overlay puts in a mapping (vma->vm_file) is the layer's file,
 * embedded in one of these with the overlay path the process opened. */
struct backing_file {
	struct file file;
	struct path user_path;
} __attribute__((preserve_access_index));

struct linux_binprm {
	struct file *file;
} __attribute__((preserve_access_index));

struct anon_vma;

struct vm_area_struct {
	unsigned long vm_flags;
	struct file *vm_file;
	/* Set once a private mapping has anonymous (written, copy-on-write) pages. */
	struct anon_vma *anon_vma;
} __attribute__((preserve_access_index));

struct ns_common {
	unsigned int inum;
} __attribute__((preserve_access_index));

struct pid_namespace {
	struct ns_common ns;
} __attribute__((preserve_access_index));

struct nsproxy {
	struct pid_namespace *pid_ns_for_children;
} __attribute__((preserve_access_index));

struct upid {
	int nr;
	struct pid_namespace *ns;
} __attribute__((preserve_access_index));

struct pid {
	unsigned int level;
	struct upid numbers[1];
} __attribute__((preserve_access_index));

struct task_struct {
	int pid;
	int tgid;
	struct nsproxy *nsproxy;
	struct pid *thread_pid;
	struct task_struct *real_parent;
} __attribute__((preserve_access_index));

#endif
