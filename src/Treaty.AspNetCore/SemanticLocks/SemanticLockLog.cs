using Microsoft.Extensions.Logging;

namespace Treaty.AspNetCore.SemanticLocks;

/// <summary>The semantic locks' log messages (event ids 4151-4199).</summary>
internal static partial class SemanticLockLog
{
    [LoggerMessage(EventId = 4151, Level = LogLevel.Debug, Message = "Semantic lock {Resource} acquired by {Gid}")]
    public static partial void Acquired(ILogger logger, string resource, string gid);

    [LoggerMessage(EventId = 4152, Level = LogLevel.Debug, Message = "Semantic lock {Resource} refused to {Gid}: held by {Holder}")]
    public static partial void Refused(ILogger logger, string resource, string gid, string holder);

    [LoggerMessage(EventId = 4153, Level = LogLevel.Warning, Message = "Semantic lock {Resource} taken over by {Gid} from {Holder}, which held it since {Since} and let it expire")]
    public static partial void TakenOver(ILogger logger, string resource, string gid, string holder, DateTimeOffset since);

    [LoggerMessage(EventId = 4154, Level = LogLevel.Debug, Message = "Semantic lock {Resource} released by {Gid}")]
    public static partial void Released(ILogger logger, string resource, string gid);

    [LoggerMessage(EventId = 4155, Level = LogLevel.Information, Message = "Semantic lock table ready ({Dialect})")]
    public static partial void SchemaReady(ILogger logger, Treaty.AspNetCore.Data.SqlDialect dialect);
}
