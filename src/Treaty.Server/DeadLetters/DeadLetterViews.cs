using System.Text.Json;
using System.Text.Json.Serialization;

namespace Treaty.Server.DeadLetters;

/// <summary>The dead letters of every configured service, and how each service answered.</summary>
/// <param name="Sources">One per configured source, in configuration order, reachable or not.</param>
/// <param name="DeadLetters">Every dead letter of every reachable source, most recently dead-lettered first.</param>
internal sealed record DeadLetterListView(IReadOnlyList<DeadLetterSourceView> Sources, IReadOnlyList<DeadLetterView> DeadLetters);

/// <summary>One source as the coordinator last reached it.</summary>
/// <param name="Name">The name given by <c>--dead-letter-source NAME=URL</c>.</param>
/// <param name="Url">Its base URL.</param>
/// <param name="Reachable">False when it did not answer, or answered something else than its list.</param>
/// <param name="Error">Why it is not reachable.</param>
/// <param name="Count">Its dead letters (with the status filter applied).</param>
internal sealed record DeadLetterSourceView(string Name, string Url, bool Reachable, string? Error, int Count);

/// <summary>One dead letter of one service.</summary>
/// <param name="Source">The configured source it came from.</param>
/// <param name="Id">Its id in that service (the replay's handle).</param>
/// <param name="MessageId">The message's id.</param>
/// <param name="Type">The message's type.</param>
/// <param name="CorrelationId">The business transaction (a choreographed saga's gid).</param>
/// <param name="TransactionExists">True when this coordinator has a transaction with that gid (the dashboard links it).</param>
/// <param name="Publisher">The service that published it.</param>
/// <param name="Consumer">The service (inbox) that gave up on it.</param>
/// <param name="Error">The last attempt's error.</param>
/// <param name="CreatedAt">When it was published.</param>
/// <param name="DeadLetteredAt">When it was given up on.</param>
/// <param name="Status"><c>dead</c>, <c>replaying</c> or <c>replayed</c>.</param>
/// <param name="ReplayedAt">When a replay handled it.</param>
/// <param name="Attempts">Every failed handling, oldest first.</param>
internal sealed record DeadLetterView(
    string Source, long Id, string MessageId, string Type, string CorrelationId, bool TransactionExists, string Publisher, string Consumer,
    string Error, DateTimeOffset CreatedAt, DateTimeOffset DeadLetteredAt, string Status, DateTimeOffset? ReplayedAt,
    IReadOnlyList<DeadLetterAttemptView> Attempts);

/// <summary>One failed handling.</summary>
/// <param name="Seq">1, 2, ... per message, across replays.</param>
/// <param name="At">When it failed.</param>
/// <param name="Error">The error.</param>
/// <param name="Archived">Made before an operator's replay.</param>
internal sealed record DeadLetterAttemptView(int Seq, DateTimeOffset At, string Error, bool Archived);

/// <summary>A replay the service accepted: the letter is back for delivery.</summary>
/// <param name="Source">The source.</param>
/// <param name="Id">The dead letter.</param>
/// <param name="Status"><c>replaying</c>: the service's replay worker delivers it.</param>
internal sealed record DeadLetterReplayView(string Source, long Id, string Status);

/// <summary>What a service's <c>GET /treaty/dead-letters</c> answers (Treaty.Messaging's wire form).</summary>
internal sealed record ServiceDeadLetterList(IReadOnlyList<ServiceDeadLetter>? DeadLetters);

internal sealed record ServiceDeadLetter(
    long Id, string MessageId, string Type, string CorrelationId, string Source, string Consumer, string Error,
    DateTimeOffset CreatedAt, DateTimeOffset DeadLetteredAt, string Status, DateTimeOffset? ReplayedAt,
    IReadOnlyList<DeadLetterAttemptView>? Attempts);

/// <summary>The body of the replay request to a service: who asked, for its log.</summary>
internal sealed record ServiceReplayRequest(string Actor);

/// <summary>The <c>detail</c> of a service's problem+json answer.</summary>
internal sealed record ServiceProblem(string? Detail);

[JsonSourceGenerationOptions(JsonSerializerDefaults.Web)]
[JsonSerializable(typeof(DeadLetterListView))]
[JsonSerializable(typeof(DeadLetterReplayView))]
[JsonSerializable(typeof(ServiceDeadLetterList))]
[JsonSerializable(typeof(ServiceReplayRequest))]
[JsonSerializable(typeof(ServiceProblem))]
internal sealed partial class DeadLetterJsonContext : JsonSerializerContext;
