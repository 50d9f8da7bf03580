/* Source mappings: reads of long-used sources copied from memory (see _mapped.c). */
#ifndef EXT4GEN_MAPPED_H
#define EXT4GEN_MAPPED_H

#include <stddef.h>
#include <sys/types.h>

/* A read-only shared mapping of the first size bytes of fd, or NULL (nothing to map, the
 * process's share of mappings used up, or the SIGBUS handler could not be installed).  With a
 * mapping, *knows says whether map_resident can tell which of its pages are cached. */
unsigned char *map_source(int fd, off_t size, int *knows);

/* Unmap what map_source returned for that size. */
void unmap_source(unsigned char *map, off_t size);

/* Copy n bytes from a mapping; -1 when the copy faulted (SIGBUS: the file was truncated
 * under the mapping, or the page could not be read), and dst is then undefined. */
int map_copy(unsigned char *dst, const unsigned char *src, size_t n);

/* Whether copies from mappings are safe now (ext4gen's SIGBUS handler is in place).  At most
 * once a second it also looks, and puts the handler back on top if another replaced it. */
int maps_usable(void);

/* Whether the page cache holds every page of n bytes at src, in a mapping whose *knows was 1
 * (0 when mincore fails). */
int map_resident(const unsigned char *src, size_t n);

/* Mappings held by this process now. */
long maps_held(void);

#endif
