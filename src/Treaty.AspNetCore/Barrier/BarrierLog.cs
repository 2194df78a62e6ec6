using Microsoft.Extensions.Logging;

namespace Treaty.AspNetCore.Barrier;

/// <summary>The barrier's log messages (event ids 4201-4249).</summary>
internal static partial class BarrierLog
{
    [LoggerMessage(EventId = 4201, Level = LogLevel.Debug, Message = "Barrier recorded {Gid}/{Branch}/{Op} ({Decision}, answered {StatusCode})")]
    public static partial void Recorded(ILogger logger, string gid, string branch, string op, BarrierDecision decision, int statusCode);

    [LoggerMessage(EventId = 4202, Level = LogLevel.Debug, Message = "Barrier replayed the stored answer {StatusCode} to a duplicate {Gid}/{Branch}/{Op}")]
    public static partial void Replayed(ILogger logger, string gid, string branch, string op, int statusCode);

    [LoggerMessage(EventId = 4203, Level = LogLevel.Information, Message = "Null compensation: {Gid}/{Branch}/{Op} arrived before (or instead of) its forward operation; recorded, nothing undone")]
    public static partial void NullCompensation(ILogger logger, string gid, string branch, string op);

    [LoggerMessage(EventId = 4204, Level = LogLevel.Warning, Message = "Hanging prevented: {Gid}/{Branch}/{Op} arrived after its compensation; recorded, not applied")]
    public static partial void SkippedHanging(ILogger logger, string gid, string branch, string op);

    [LoggerMessage(EventId = 4205, Level = LogLevel.Error, Message = "The handler of {Gid}/{Branch}/{Op} failed; rolled back, nothing recorded, answering 500 so the coordinator retries")]
    public static partial void HandlerFailed(ILogger logger, Exception exception, string gid, string branch, string op);

    [LoggerMessage(EventId = 4206, Level = LogLevel.Debug, Message = "Rejected a malformed branch call to {Path}: {Fields}")]
    public static partial void Malformed(ILogger logger, string path, string fields);

    [LoggerMessage(EventId = 4208, Level = LogLevel.Error, Message = "Outcome conflict: {Gid}/{Branch}/{Op} arrived after its '{Applied}' took effect here; refused, not applied (an operator must reconcile)")]
    public static partial void OutcomeConflict(ILogger logger, string gid, string branch, string op, string applied);

    [LoggerMessage(EventId = 4207, Level = LogLevel.Information, Message = "Barrier table ready ({Dialect})")]
    public static partial void SchemaReady(ILogger logger, Treaty.AspNetCore.Data.SqlDialect dialect);

    [LoggerMessage(EventId = 4209, Level = LogLevel.Warning, Message = "The barrier's recorded_at index was not created: a prepared transaction holds the table; the retention works without it, and a later start creates it")]
    public static partial void RecordedAtIndexDeferred(ILogger logger);
}
