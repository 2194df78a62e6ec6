using Microsoft.Extensions.Logging;

namespace Treaty.Storage.Sqlite;

/// <summary>The store's log messages (event ids 5001-5099; 2001-2099 are the coordinator host's).</summary>
internal static partial class Log
{
    [LoggerMessage(EventId = 5001, Level = LogLevel.Information, Message = "SQLite store opened at {Path} (schema version {Version})")]
    public static partial void Opened(ILogger logger, string path, int version);

    [LoggerMessage(EventId = 5002, Level = LogLevel.Information, Message = "SQLite store {Path} migrated to schema version {Version}")]
    public static partial void Migrated(ILogger logger, string path, int version);

    [LoggerMessage(EventId = 5003, Level = LogLevel.Error, Message = "A batch of {Count} writes failed as a whole; every write in it failed")]
    public static partial void BatchFailed(ILogger logger, Exception exception, int count);

    [LoggerMessage(EventId = 5004, Level = LogLevel.Warning, Message = "The write of {Gid} failed and was rolled back; the rest of its batch went ahead")]
    public static partial void WriteFailed(ILogger logger, Exception exception, string gid);

    [LoggerMessage(EventId = 5005, Level = LogLevel.Trace, Message = "Committed a batch of {Count} writes")]
    public static partial void BatchCommitted(ILogger logger, int count);

    [LoggerMessage(EventId = 5006, Level = LogLevel.Information, Message = "SQLite store {Path} closed")]
    public static partial void Closed(ILogger logger, string path);

    [LoggerMessage(EventId = 5007, Level = LogLevel.Warning, Message = "Checkpointing the write-ahead log of {Path} on close failed")]
    public static partial void CheckpointFailed(ILogger logger, Exception exception, string path);
}
