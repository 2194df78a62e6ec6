using Microsoft.Extensions.Logging;

namespace Treaty.Storage.PostgreSql;

/// <summary>The store's log messages (event ids 5101-5199; 5001-5099 are the SQLite store's). A
/// connection string is never logged: only host, port and database.</summary>
internal static partial class Log
{
    [LoggerMessage(EventId = 5101, Level = LogLevel.Information, Message = "PostgreSQL store opened on {Host}:{Port}/{Database} schema {Schema} (schema version {Version})")]
    public static partial void Opened(ILogger logger, string? host, int port, string? database, string schema, int version);

    [LoggerMessage(EventId = 5102, Level = LogLevel.Information, Message = "PostgreSQL store schema {Schema} migrated to version {Version}")]
    public static partial void Migrated(ILogger logger, string schema, int version);

    [LoggerMessage(EventId = 5103, Level = LogLevel.Warning, Message = "The finish listener lost its PostgreSQL connection; reconnecting in {Delay}")]
    public static partial void ListenerLost(ILogger logger, Exception exception, TimeSpan delay);

    [LoggerMessage(EventId = 5104, Level = LogLevel.Information, Message = "The finish listener is listening on channel {Channel}")]
    public static partial void Listening(ILogger logger, string channel);

    [LoggerMessage(EventId = 5105, Level = LogLevel.Warning, Message = "Notifying {Count} finished transactions failed (attempt {Attempt}); other instances' listeners catch up when they reconnect")]
    public static partial void NotifyFailed(ILogger logger, Exception exception, int count, int attempt);

    [LoggerMessage(EventId = 5106, Level = LogLevel.Information, Message = "PostgreSQL store on {Host}:{Port}/{Database} closed")]
    public static partial void Closed(ILogger logger, string? host, int port, string? database);
}
