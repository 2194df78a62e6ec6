using System.Text.Json;
using System.Text.Json.Serialization;

namespace Treaty.Core.Contracts;

// The HTTP API's JSON shapes, shared by the server and the client SDK so there is one definition
// of the wire format.

/// <summary>Body of <c>POST /api/v1/transactions</c>.</summary>
[JsonUnmappedMemberHandling(JsonUnmappedMemberHandling.Disallow)]
public sealed class SubmitTransactionRequest
{
    public string? Gid { get; set; }

    public string? Protocol { get; set; }

    public JsonElement? Payload { get; set; }

    public List<BranchRequest?>? Branches { get; set; }

    /// <summary>Two-phase message only: the sender's URL that says whether its local transaction committed.</summary>
    public string? QueryPrepared { get; set; }

    public long? TimeoutMs { get; set; }

    public RetryPolicyRequest? Retry { get; set; }

    /// <summary>Operation name to URL of the transaction's own operations, for every URL set.</summary>
    public IEnumerable<KeyValuePair<string, string?>> OperationUrls()
    {
        yield return new("queryPrepared", QueryPrepared);
    }
}

/// <summary>One branch of a submit: its name and the URLs of its protocol's operations.</summary>
[JsonUnmappedMemberHandling(JsonUnmappedMemberHandling.Disallow)]
public sealed class BranchRequest
{
    public string? Name { get; set; }

    public string? Action { get; set; }

    public string? Compensate { get; set; }

    public string? Try { get; set; }

    public string? Confirm { get; set; }

    public string? Cancel { get; set; }

    public string? Prepare { get; set; }

    public string? Commit { get; set; }

    public string? Rollback { get; set; }

    public string? CanCommit { get; set; }

    public string? PreCommit { get; set; }

    public string? DoCommit { get; set; }

    public string? Abort { get; set; }

    /// <summary>Absent: the protocol's default (a saga: the previous branch, so a list is a
    /// sequence; the others: none). Empty: none (runs at once, in parallel).</summary>
    public List<string?>? DependsOn { get; set; }

    public bool? Pivot { get; set; }

    public long? TimeoutMs { get; set; }

    public RetryPolicyRequest? Retry { get; set; }

    /// <summary>Operation name to URL, for every URL set.</summary>
    public IEnumerable<KeyValuePair<string, string?>> OperationUrls()
    {
        yield return new("action", Action);
        yield return new("compensate", Compensate);
        yield return new("try", Try);
        yield return new("confirm", Confirm);
        yield return new("cancel", Cancel);
        yield return new("prepare", Prepare);
        yield return new("commit", Commit);
        yield return new("rollback", Rollback);
        yield return new("canCommit", CanCommit);
        yield return new("preCommit", PreCommit);
        yield return new("doCommit", DoCommit);
        yield return new("abort", Abort);
    }
}

/// <summary>Retry settings of a transaction or a branch.</summary>
[JsonUnmappedMemberHandling(JsonUnmappedMemberHandling.Disallow)]
public sealed class RetryPolicyRequest
{
    public int? MaxAttempts { get; set; }

    public long? InitialDelayMs { get; set; }

    public long? MaxDelayMs { get; set; }
}

/// <summary>Body of <c>POST .../abort</c> (optional).</summary>
public sealed class AbortRequest
{
    public string? Reason { get; set; }
}

/// <summary>A transaction as the API shows it. <c>Reason</c> says why it aborted (or is aborting).</summary>
public sealed record TransactionView(
    string Gid,
    string Protocol,
    string Status,
    bool Stuck,
    string? Reason,
    DateTimeOffset CreatedAt,
    DateTimeOffset UpdatedAt,
    DateTimeOffset? Deadline,
    DateTimeOffset? NextWakeAt,
    JsonElement Payload,
    IReadOnlyList<BranchView> Branches)
{
    /// <summary>The protocol phase (<c>prepare</c>, <c>commit</c>, <c>compensate</c>, ...).</summary>
    public string? Phase { get; init; }

    /// <summary><c>commit</c>, <c>abort</c>, or null while undecided.</summary>
    public string? Decision { get; init; }

    /// <summary>While stuck: the operation an operator must look at.</summary>
    public StuckView? StuckOn { get; init; }

    /// <summary>The transaction's own operations (msg's <c>queryPrepared</c>); null for most.</summary>
    public IReadOnlyDictionary<string, OperationView>? Ops { get; init; }

    /// <summary>The coordinator's writes of this transaction so far: all of them, and the forced ones (durable before a call left).</summary>
    public WritesView? Writes { get; init; }
}

/// <summary>How many times the coordinator wrote a transaction, and how many of those writes it waited for before acting.</summary>
public sealed record WritesView(long Total, int Forced);

/// <summary>The operation a stuck transaction waits on.</summary>
public sealed record StuckView(string? Branch, string Op, int Attempts, int? LastStatusCode, string? LastError);

/// <summary>A branch as the API shows it.</summary>
public sealed record BranchView(
    string Name,
    string Status,
    IReadOnlyList<string> DependsOn,
    bool Pivot,
    IReadOnlyDictionary<string, OperationView> Ops)
{
    /// <summary>For 2PC and 3PC: <c>yes</c>, <c>no</c>, or null before the vote.</summary>
    public string? Vote { get; init; }
}

/// <summary>One operation of a branch as the API shows it.</summary>
public sealed record OperationView(
    string Url,
    string Status,
    int Attempts,
    int? LastStatusCode,
    string? LastError,
    DateTimeOffset? FirstAttemptAt,
    DateTimeOffset? LastAttemptAt,
    DateTimeOffset? FinishedAt,
    DateTimeOffset? NextAttemptAt,
    JsonElement? Result);

/// <summary>A page of the listing.</summary>
public sealed record TransactionListView(IReadOnlyList<TransactionSummaryView> Items, string? NextCursor);

/// <summary>A transaction in a listing.</summary>
public sealed record TransactionSummaryView(
    string Gid,
    string Protocol,
    string Status,
    bool Stuck,
    string? Reason,
    DateTimeOffset CreatedAt,
    DateTimeOffset UpdatedAt,
    int Branches)
{
    public string? Phase { get; init; }

    /// <summary><c>commit</c>, <c>abort</c>, or null while undecided.</summary>
    public string? Decision { get; init; }

    /// <summary>While stuck: the operation an operator must look at (the dashboard's stuck view).</summary>
    public StuckView? StuckOn { get; init; }
}

/// <summary>One entry of a transaction's timeline.</summary>
public sealed record EventView(
    long Sequence,
    DateTimeOffset At,
    string Kind,
    string? Branch,
    string? Op,
    int? Attempt,
    int? StatusCode,
    string? Detail)
{
    /// <summary>For an answered attempt: how long the call took, in milliseconds.</summary>
    public long? DurationMs { get; init; }

    /// <summary>For an answered attempt: the participant's answer, clipped to the server's <c>TimelineBodyBytes</c>.</summary>
    public string? Body { get; init; }
}

/// <summary>The timeline of a transaction.</summary>
public sealed record EventListView(string Gid, IReadOnlyList<EventView> Events);

/// <summary>How many transactions match a listing's filters (all but <c>status</c>), by status.</summary>
/// <param name="Total">All of them.</param>
/// <param name="Stuck">Those waiting for an operator.</param>
/// <param name="ByStatus">Count per status (<c>prepared</c>, <c>pending</c>, ...); every status is present.</param>
public sealed record TransactionCountsView(long Total, long Stuck, IReadOnlyDictionary<string, long> ByStatus);

/// <summary>The coordinator instances that hold unfinished transactions (<c>GET /api/v1/instances</c>).</summary>
/// <param name="Self">The instance that answered: its lease owner name.</param>
/// <param name="Instances">Every instance holding at least one unfinished transaction, by name. An
/// idle instance holds none and is not listed.</param>
public sealed record InstanceListView(string Self, IReadOnlyList<InstanceView> Instances);

/// <summary>One coordinator instance and the unfinished transactions it holds.</summary>
/// <param name="Instance">Its lease owner name (<c>--instance-id</c>).</param>
/// <param name="Held">How many unfinished transactions it holds.</param>
/// <param name="LeaseUntil">The latest expiry among its leases, by the store's clock.</param>
/// <param name="Expired">True when that has passed: the instance stopped renewing (dead, paused or cut
/// off), and any other instance takes its transactions over as they come due.</param>
public sealed record InstanceView(string Instance, long Held, DateTimeOffset LeaseUntil, bool Expired);

/// <summary>RFC 9457 problem details as Treaty writes them (with the offending fields).</summary>
public sealed record ProblemView(
    string Type,
    string Title,
    int Status,
    string? Detail,
    string? Instance,
    IReadOnlyDictionary<string, string[]>? Errors);
