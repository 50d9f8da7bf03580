/* Source leases: the compiled read path's cheap freshness check (see _leases.c). */
#ifndef EXT4GEN_LEASES_H
#define EXT4GEN_LEASES_H

#include <stdint.h>

/* Start the watcher thread in this process; NULL on success, else why leases are not used. */
const char *leases_start(void);

/* Lease descriptor fd of a source and watch it; *flag is set to 1 once both are in place and
 * pinned(fd, arg) (the caller's pin check, made after them) said yes; cleared when the kernel
 * breaks the lease or the watch reports a change.  Returns whether *flag was set. */
int lease_take(int fd, uint8_t *flag, int (*pinned)(int fd, void *arg), void *arg);

/* Give up fd's lease and watch (before closing it). */
void lease_drop(int fd);

/* After a read through a descriptor whose lease flag is *flag: whether the bytes read cannot
 * have changed since the pin check (so the per-read fstat can be skipped). */
int lease_holds(const uint8_t *flag);

/* Leases held by this process now. */
long leases_held(void);

/* In a fork child: no watcher there, so no lease is trusted. */
void leases_fork_child(void);

#endif
