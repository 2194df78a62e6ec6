using System.Text.Json.Serialization;

namespace Treaty.Server.Alerts;

/// <summary>The JSON body POSTed to the alert webhook.</summary>
/// <param name="Id">Stable across retries and restarts (<c>{gid}/stuck/{episode}</c>,
/// <c>{gid}/resolved/{episode}</c>): delivery is at least once, so a receiver deduplicates on it.
/// Also sent as the <c>Idempotency-Key</c> header.</param>
/// <param name="Kind"><c>stuck</c> or <c>resolved</c>.</param>
/// <param name="Gid">The transaction.</param>
/// <param name="Episode">Which time it became stuck (1 the first time).</param>
/// <param name="Protocol">Its protocol (null when it no longer exists).</param>
/// <param name="Status">The transaction's status when the alert was recorded.</param>
/// <param name="At">When the alert was recorded.</param>
/// <param name="Message">One line for a human.</param>
/// <param name="StuckOn">For <c>stuck</c>: the operation that ran out of attempts.</param>
/// <param name="Reason">Why the transaction aborts, if it does.</param>
/// <param name="Link">The transaction on this coordinator's API.</param>
internal sealed record AlertMessage(
    string Id,
    string Kind,
    string Gid,
    int Episode,
    string? Protocol,
    string? Status,
    DateTimeOffset At,
    string Message,
    AlertStuckOn? StuckOn,
    string? Reason,
    string Link);

internal sealed record AlertStuckOn(string? Branch, string Op, int Attempts, int? LastStatusCode, string? LastError);

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull)]
[JsonSerializable(typeof(AlertMessage))]
internal sealed partial class AlertJsonContext : JsonSerializerContext;
