using Microsoft.Extensions.Logging;

namespace Treaty.AspNetCore.InDoubt;

/// <summary>
/// Log messages of the in-doubt resolver (event ids 4401-4449) and of PostgreSQL prepared
/// transactions (4451-4469). The kit's other ranges: idempotency 4101-4149, semantic locks
/// 4151-4199, barrier 4201-4249, callback verification 4301-4349.
/// </summary>
internal static partial class InDoubtLog
{
    [LoggerMessage(EventId = 4401, Level = LogLevel.Information, Message = "In-doubt resolver started: asks {Coordinator} about branches in doubt for more than {After}, every {PollInterval}")]
    public static partial void Started(ILogger logger, Uri coordinator, TimeSpan after, TimeSpan pollInterval);

    [LoggerMessage(EventId = 4402, Level = LogLevel.Information, Message = "Resolved {Gid}/{Branch} in doubt at {Stage}: the coordinator answered {Answer}, so {Op} ran here ({StatusCode}, barrier {Barrier})")]
    public static partial void Resolved(ILogger logger, string gid, string branch, PreparedStage stage, CoordinatorAnswer answer, string op, int statusCode, string barrier);

    [LoggerMessage(EventId = 4403, Level = LogLevel.Information, Message = "{Gid}/{Branch} stays in doubt at {Stage} (coordinator: {Answer}); check {Checks} again in {Delay}")]
    public static partial void StillInDoubt(ILogger logger, string gid, string branch, PreparedStage stage, CoordinatorAnswer answer, int checks, TimeSpan delay);

    [LoggerMessage(EventId = 4404, Level = LogLevel.Warning, Message = "3PC termination rule: {Gid}/{Branch} at {Stage} cannot learn the outcome (coordinator: {Answer}) and decides alone to {Op}; under a partition this may contradict the coordinator")]
    public static partial void TerminationRule(ILogger logger, string gid, string branch, PreparedStage stage, CoordinatorAnswer answer, string op);

    [LoggerMessage(EventId = 4405, Level = LogLevel.Debug, Message = "{Gid}/{Branch} left {Stage} while the coordinator was asked; nothing to resolve")]
    public static partial void Superseded(ILogger logger, string gid, string branch, PreparedStage stage);

    [LoggerMessage(EventId = 4406, Level = LogLevel.Warning, Message = "Running {Op} of {Gid}/{Branch} locally answered {StatusCode}; it is tried again in {Delay}")]
    public static partial void OutcomeRefused(ILogger logger, string gid, string branch, string op, int statusCode, TimeSpan delay);

    [LoggerMessage(EventId = 4407, Level = LogLevel.Warning, Message = "Running {Op} of {Gid}/{Branch} locally failed; it is tried again in {Delay}")]
    public static partial void OutcomeFailed(ILogger logger, Exception exception, string gid, string branch, string op, TimeSpan delay);

    [LoggerMessage(EventId = 4408, Level = LogLevel.Error, Message = "{Gid}/{Branch} voted at endpoint '{Endpoint}', which this application no longer maps (as a {Kind} endpoint); it cannot be resolved here until it is mapped again")]
    public static partial void UnknownEndpoint(ILogger logger, string gid, string branch, string endpoint, string kind);

    [LoggerMessage(EventId = 4409, Level = LogLevel.Warning, Message = "An in-doubt pass failed; the next one runs in {PollInterval}")]
    public static partial void PassFailed(ILogger logger, Exception exception, TimeSpan pollInterval);

    [LoggerMessage(EventId = 4410, Level = LogLevel.Debug, Message = "Asking the coordinator about {Gid} gave no answer: {Reason}")]
    public static partial void CoordinatorUnreachable(ILogger logger, string gid, string reason);

    [LoggerMessage(EventId = 4451, Level = LogLevel.Debug, Message = "Prepared {Gid}/{Branch} as PostgreSQL prepared transaction {Name}")]
    public static partial void PreparedTransaction(ILogger logger, string gid, string branch, string name);

    [LoggerMessage(EventId = 4452, Level = LogLevel.Debug, Message = "COMMIT PREPARED {Name} ({Gid}/{Branch})")]
    public static partial void CommittedPrepared(ILogger logger, string gid, string branch, string name);

    [LoggerMessage(EventId = 4453, Level = LogLevel.Debug, Message = "ROLLBACK PREPARED {Name} ({Gid}/{Branch})")]
    public static partial void RolledBackPrepared(ILogger logger, string gid, string branch, string name);

    [LoggerMessage(EventId = 4454, Level = LogLevel.Information, Message = "PostgreSQL prepared transactions enabled (max_prepared_transactions = {Max})")]
    public static partial void PreparedTransactionsReady(ILogger logger, int max);
}
