// See PowerLossVFS.h. A file's writes since its last sync are kept as an undo log (what each write overwrote,
// newest first) and the size it had when that sync began. A sync keeps the undo entries recorded after it began:
// a write racing with a sync may or may not be on the disk, and the test assumes the worst.
#include "PowerLossVFS.h"

#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct Undo {
    sqlite3_int64 offset;
    int size;
    unsigned char *bytes;
    struct Undo *older;
} Undo;

/// What a path's file had at its last sync. Shared by every handle of the path (a sync through any of them
/// covers the file, as fsync does).
typedef struct Track {
    char *path;
    sqlite3_int64 syncedSize;
    Undo *newest;
    long long count;  // entries ever recorded: a sync keeps those recorded after its start
    struct Track *next;
} Track;

typedef struct {
    sqlite3_file base;
    Track *track;  // NULL for files the VFS does not follow (temporary ones)
    sqlite3_file *real;
} File;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static Track *tracks;
static int isCut;
static sqlite3_vfs vfs;
static sqlite3_vfs *realVFS;
static int syncDelay;

static sqlite3_int64 currentSize(File *file) {
    sqlite3_int64 size = 0;
    if (file->real->pMethods->xFileSize(file->real, &size) != SQLITE_OK) return 0;
    return size;
}

/// Records what `[offset, offset + amount)` holds now, within `limit` (beyond it a cut truncates anyway).
static int remember(File *file, sqlite3_int64 offset, sqlite3_int64 amount, sqlite3_int64 limit) {
    if (offset >= limit || amount <= 0) return SQLITE_OK;
    if (offset + amount > limit) amount = limit - offset;
    Undo *undo = malloc(sizeof(Undo));
    if (!undo) return SQLITE_NOMEM;
    undo->bytes = malloc((size_t)amount);
    if (!undo->bytes) {
        free(undo);
        return SQLITE_NOMEM;
    }
    undo->offset = offset;
    undo->size = (int)amount;
    int rc = file->real->pMethods->xRead(file->real, undo->bytes, (int)amount, offset);
    if (rc != SQLITE_OK && rc != SQLITE_IOERR_SHORT_READ) {
        free(undo->bytes);
        free(undo);
        return rc;
    }
    undo->older = file->track->newest;
    file->track->newest = undo;
    file->track->count += 1;
    return SQLITE_OK;
}

static void forget(Undo *undo) {
    while (undo) {
        Undo *older = undo->older;
        free(undo->bytes);
        free(undo);
        undo = older;
    }
}

static int powerLossClose(sqlite3_file *base) {
    File *file = (File *)base;
    return file->real->pMethods->xClose(file->real);
}

static int powerLossRead(sqlite3_file *base, void *buffer, int amount, sqlite3_int64 offset) {
    File *file = (File *)base;
    return file->real->pMethods->xRead(file->real, buffer, amount, offset);
}

static int powerLossWrite(sqlite3_file *base, const void *buffer, int amount, sqlite3_int64 offset) {
    File *file = (File *)base;
    pthread_mutex_lock(&lock);
    int rc = isCut ? SQLITE_IOERR_WRITE : SQLITE_OK;
    if (rc == SQLITE_OK && file->track) {
        sqlite3_int64 size = currentSize(file);
        rc = remember(file, offset, amount, size < file->track->syncedSize ? size : file->track->syncedSize);
    }
    if (rc == SQLITE_OK) rc = file->real->pMethods->xWrite(file->real, buffer, amount, offset);
    pthread_mutex_unlock(&lock);
    return rc;
}

static int powerLossTruncate(sqlite3_file *base, sqlite3_int64 size) {
    File *file = (File *)base;
    pthread_mutex_lock(&lock);
    int rc = isCut ? SQLITE_IOERR_TRUNCATE : SQLITE_OK;
    if (rc == SQLITE_OK && file->track) {
        sqlite3_int64 current = currentSize(file);
        sqlite3_int64 limit = current < file->track->syncedSize ? current : file->track->syncedSize;
        rc = remember(file, size, limit - size, limit);
    }
    if (rc == SQLITE_OK) rc = file->real->pMethods->xTruncate(file->real, size);
    pthread_mutex_unlock(&lock);
    return rc;
}

static int powerLossSync(sqlite3_file *base, int flags) {
    File *file = (File *)base;
    pthread_mutex_lock(&lock);
    if (isCut) {
        pthread_mutex_unlock(&lock);
        return SQLITE_IOERR_FSYNC;
    }
    long long mark = file->track ? file->track->count : 0;
    sqlite3_int64 size = file->track ? currentSize(file) : 0;
    pthread_mutex_unlock(&lock);
    if (syncDelay > 0) usleep((useconds_t)syncDelay);
    int rc = file->real->pMethods->xSync(file->real, flags);
    if (rc != SQLITE_OK || !file->track) return rc;
    pthread_mutex_lock(&lock);
    if (isCut) {
        // The power went out before the sync could return: its caller never hears of it.
        rc = SQLITE_IOERR_FSYNC;
    } else {
        // Keep the entries recorded after the sync began (the newest `count - mark`), forget the rest.
        Track *track = file->track;
        Undo **link = &track->newest;
        for (long long kept = track->count - mark; *link && kept > 0; kept--) link = &(*link)->older;
        forget(*link);
        *link = NULL;
        track->syncedSize = size;
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

static int powerLossFileSize(sqlite3_file *base, sqlite3_int64 *size) {
    File *file = (File *)base;
    return file->real->pMethods->xFileSize(file->real, size);
}

static int powerLossLock(sqlite3_file *base, int level) {
    File *file = (File *)base;
    return file->real->pMethods->xLock(file->real, level);
}

static int powerLossUnlock(sqlite3_file *base, int level) {
    File *file = (File *)base;
    return file->real->pMethods->xUnlock(file->real, level);
}

static int powerLossCheckReservedLock(sqlite3_file *base, int *reserved) {
    File *file = (File *)base;
    return file->real->pMethods->xCheckReservedLock(file->real, reserved);
}

static int powerLossFileControl(sqlite3_file *base, int op, void *argument) {
    File *file = (File *)base;
    return file->real->pMethods->xFileControl(file->real, op, argument);
}

static int powerLossSectorSize(sqlite3_file *base) {
    File *file = (File *)base;
    return file->real->pMethods->xSectorSize(file->real);
}

static int powerLossDeviceCharacteristics(sqlite3_file *base) {
    File *file = (File *)base;
    return file->real->pMethods->xDeviceCharacteristics(file->real);
}

static int powerLossShmMap(sqlite3_file *base, int region, int size, int extend, void volatile **memory) {
    File *file = (File *)base;
    return file->real->pMethods->xShmMap(file->real, region, size, extend, memory);
}

static int powerLossShmLock(sqlite3_file *base, int offset, int count, int flags) {
    File *file = (File *)base;
    return file->real->pMethods->xShmLock(file->real, offset, count, flags);
}

static void powerLossShmBarrier(sqlite3_file *base) {
    File *file = (File *)base;
    file->real->pMethods->xShmBarrier(file->real);
}

static int powerLossShmUnmap(sqlite3_file *base, int delete) {
    File *file = (File *)base;
    return file->real->pMethods->xShmUnmap(file->real, delete);
}

static int powerLossFetch(sqlite3_file *base, sqlite3_int64 offset, int amount, void **pointer) {
    // No memory-mapped pages: every read goes through xRead, where the file is what the undo log says.
    (void)base, (void)offset, (void)amount;
    *pointer = NULL;
    return SQLITE_OK;
}

static int powerLossUnfetch(sqlite3_file *base, sqlite3_int64 offset, void *pointer) {
    (void)base, (void)offset, (void)pointer;
    return SQLITE_OK;
}

static const sqlite3_io_methods methods = {
    3,
    powerLossClose,
    powerLossRead,
    powerLossWrite,
    powerLossTruncate,
    powerLossSync,
    powerLossFileSize,
    powerLossLock,
    powerLossUnlock,
    powerLossCheckReservedLock,
    powerLossFileControl,
    powerLossSectorSize,
    powerLossDeviceCharacteristics,
    powerLossShmMap,
    powerLossShmLock,
    powerLossShmBarrier,
    powerLossShmUnmap,
    powerLossFetch,
    powerLossUnfetch,
};

/// The path's track, made on its first open with the size the file has then (what was there before the test
/// started is on the disk). Called with the lock held.
static Track *trackFor(const char *path, File *file) {
    for (Track *track = tracks; track; track = track->next) {
        if (strcmp(track->path, path) == 0) return track;
    }
    Track *track = calloc(1, sizeof(Track));
    if (!track) return NULL;
    track->path = strdup(path);
    file->track = track;
    track->syncedSize = currentSize(file);
    track->next = tracks;
    tracks = track;
    return track;
}

static int powerLossOpen(sqlite3_vfs *self, sqlite3_filename name, sqlite3_file *base, int flags, int *outFlags) {
    (void)self;
    File *file = (File *)base;
    memset(file, 0, sizeof(File));
    file->real = (sqlite3_file *)(file + 1);
    int rc = realVFS->xOpen(realVFS, name, file->real, flags, outFlags);
    if (rc != SQLITE_OK) return rc;
    if (name && (flags & (SQLITE_OPEN_MAIN_DB | SQLITE_OPEN_WAL | SQLITE_OPEN_MAIN_JOURNAL))) {
        pthread_mutex_lock(&lock);
        file->track = trackFor(name, file);
        pthread_mutex_unlock(&lock);
    }
    base->pMethods = &methods;
    return SQLITE_OK;
}

static int powerLossDelete(sqlite3_vfs *self, const char *path, int syncDirectory) {
    (void)self;
    pthread_mutex_lock(&lock);
    if (isCut) {
        pthread_mutex_unlock(&lock);
        return SQLITE_IOERR_DELETE;
    }
    // A deleted file starts afresh if it comes back (the deletion itself is taken as durable).
    for (Track **link = &tracks; *link; link = &(*link)->next) {
        if (strcmp((*link)->path, path) == 0) {
            Track *gone = *link;
            *link = gone->next;
            forget(gone->newest);
            free(gone->path);
            free(gone);
            break;
        }
    }
    pthread_mutex_unlock(&lock);
    return realVFS->xDelete(realVFS, path, syncDirectory);
}

static int powerLossAccess(sqlite3_vfs *self, const char *path, int flags, int *result) {
    (void)self;
    return realVFS->xAccess(realVFS, path, flags, result);
}

static int powerLossFullPathname(sqlite3_vfs *self, const char *path, int size, char *output) {
    (void)self;
    return realVFS->xFullPathname(realVFS, path, size, output);
}

static int powerLossRandomness(sqlite3_vfs *self, int size, char *output) {
    (void)self;
    return realVFS->xRandomness(realVFS, size, output);
}

static int powerLossSleep(sqlite3_vfs *self, int microseconds) {
    (void)self;
    return realVFS->xSleep(realVFS, microseconds);
}

static int powerLossCurrentTime(sqlite3_vfs *self, double *time) {
    (void)self;
    return realVFS->xCurrentTime(realVFS, time);
}

static int powerLossGetLastError(sqlite3_vfs *self, int size, char *output) {
    (void)self;
    return realVFS->xGetLastError(realVFS, size, output);
}

static int powerLossCurrentTimeInt64(sqlite3_vfs *self, sqlite3_int64 *time) {
    (void)self;
    return realVFS->xCurrentTimeInt64(realVFS, time);
}

int baton_power_loss_install(int syncDelayMicroseconds) {
    if (realVFS) return SQLITE_OK;
    syncDelay = syncDelayMicroseconds;
    sqlite3_vfs *found = sqlite3_vfs_find(NULL);
    if (!found) return SQLITE_ERROR;
    realVFS = found;
    vfs.iVersion = 2;
    vfs.szOsFile = (int)sizeof(File) + found->szOsFile;
    vfs.mxPathname = found->mxPathname;
    vfs.zName = "baton-power-loss";
    vfs.xOpen = powerLossOpen;
    vfs.xDelete = powerLossDelete;
    vfs.xAccess = powerLossAccess;
    vfs.xFullPathname = powerLossFullPathname;
    vfs.xRandomness = powerLossRandomness;
    vfs.xSleep = powerLossSleep;
    vfs.xCurrentTime = powerLossCurrentTime;
    vfs.xGetLastError = powerLossGetLastError;
    vfs.xCurrentTimeInt64 = powerLossCurrentTimeInt64;
    return sqlite3_vfs_register(&vfs, 1);
}

long long baton_power_loss_cut(void) {
    long long reverted = 0;
    pthread_mutex_lock(&lock);
    isCut = 1;
    for (Track *track = tracks; track; track = track->next) {
        int fd = open(track->path, O_RDWR);
        if (fd < 0) continue;
        for (Undo *undo = track->newest; undo; undo = undo->older) {
            if (pwrite(fd, undo->bytes, (size_t)undo->size, undo->offset) == undo->size) reverted += undo->size;
        }
        off_t size = lseek(fd, 0, SEEK_END);
        if (size > track->syncedSize) reverted += size - track->syncedSize;
        if (ftruncate(fd, track->syncedSize) != 0) reverted = -1;
        close(fd);
        if (reverted < 0) break;
    }
    pthread_mutex_unlock(&lock);
    return reverted;
}
