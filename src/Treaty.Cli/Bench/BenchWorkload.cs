using System.Globalization;
using System.Text;
using System.Text.Json;

namespace Treaty.Cli.Bench;

/// <summary>
/// The transactions the bench submits: <c>branches</c> branches named <c>b0</c>, <c>b1</c>, ... on
/// the no-op participant, each with every operation URL of the protocol; and the baseline, the same
/// calls made by the client itself with no coordinator. Used by <c>treaty bench</c> and by
/// <c>bench/Treaty.Bench</c> (which counts messages and writes per protocol).
/// </summary>
/// <param name="Protocol">saga, tcc, 2pc, 3pc or msg.</param>
/// <param name="Branches">Branches per transaction.</param>
/// <param name="ParticipantUrl">The no-op participant's base URL (<see cref="NoOpParticipant"/>).</param>
/// <param name="CoordinatorUrls">The base URLs of the coordinator instances: transaction i goes to
/// instance i mod their count (all of one transaction's requests to the same one).</param>
internal sealed record BenchWorkload(string Protocol, int Branches, string ParticipantUrl, IReadOnlyList<string> CoordinatorUrls)
{
    /// <summary>The instance transaction <paramref name="i"/> talks to.</summary>
    private string CoordinatorFor(long i) => CoordinatorUrls[(int)(Math.Abs(i) % CoordinatorUrls.Count)];

    /// <summary>The terminal status of a transaction that committed.</summary>
    public const string Committed = "committed";

    /// <summary>The operations of each protocol's branches; the first is the one that can refuse.</summary>
    public static string[] Operations(string protocol) => protocol switch
    {
        "saga" => ["action", "compensate"],
        "tcc" => ["try", "confirm", "cancel"],
        "2pc" => ["prepare", "commit", "rollback"],
        "3pc" => ["canCommit", "preCommit", "doCommit", "abort"],
        "msg" => ["action"],
        _ => throw new ArgumentOutOfRangeException(nameof(protocol), protocol, "saga, tcc, 2pc, 3pc or msg"),
    };

    /// <summary>
    /// Runs transaction <paramref name="i"/> to its end (<c>?wait=30s</c>) and returns its status
    /// (<c>committed</c>, <c>aborted</c>, ...) or what went wrong (<c>HTTP 503</c>). With
    /// <paramref name="abort"/>, the last branch refuses its first operation (a NO vote, a failed try
    /// or action); a message is then a sender that rolled back (queryPrepared answers 409 once its
    /// 1 ms timeout passes).
    /// </summary>
    public Task<string> RunAsync(HttpClient http, long i, bool abort, CancellationToken cancellationToken) =>
        Protocol == "msg" ? MessageAsync(http, i, abort, cancellationToken) : SubmitAsync(http, CoordinatorFor(i), Body(i, abort), "?wait=30s", cancellationToken);

    /// <summary>The submit body of transaction <paramref name="i"/> (not a message's).</summary>
    public string Body(long i, bool abort)
    {
        var ops = Operations(Protocol);
        var branches = new StringBuilder();
        for (var b = 0; b < Branches; b++)
        {
            branches.Append(b == 0 ? "{" : ",{").Append(CultureInfo.InvariantCulture, $"\"name\":\"b{b}\"");
            foreach (var op in ops)
            {
                var refuse = abort && b == Branches - 1 && op == ops[0];
                branches.Append(CultureInfo.InvariantCulture, $",\"{op}\":\"{Url(refuse, b, op)}\"");
            }

            branches.Append('}');
        }

        return $$"""{"gid":"{{Gid(i)}}","protocol":"{{Protocol}}","payload":{"amount":1},"branches":[{{branches}}]}""";
    }

    /// <summary>
    /// A saga whose first branch's action the participant holds (<c>/hold/</c>) until the bench
    /// opens its gate: <see cref="Branches"/> branches, every call's timeout long enough that a
    /// held call is never given up on. Its gid is <c>hold-{run}-{i}</c>.
    /// </summary>
    public string HoldBody(string run, long i)
    {
        var branches = new StringBuilder();
        for (var b = 0; b < Branches; b++)
        {
            var action = b == 0 ? $"{ParticipantUrl}/hold/b0/action" : Url(false, b, "action");
            branches.Append(b == 0 ? "{" : ",{").Append(CultureInfo.InvariantCulture,
                $"\"name\":\"b{b}\",\"action\":\"{action}\",\"compensate\":\"{Url(false, b, "compensate")}\",\"timeoutMs\":{HeldCallTimeoutMs}}}");
        }

        return string.Create(CultureInfo.InvariantCulture,
            $$"""{"gid":"hold-{{run}}-{{i}}","protocol":"saga","payload":{"amount":1},"branches":[{{branches}}]}""");
    }

    /// <summary>The call timeout of a held saga's branches: longer than any hold.</summary>
    public const long HeldCallTimeoutMs = 3_600_000;

    /// <summary>Submits <paramref name="body"/> without waiting; null when the coordinator took it (2xx), else what went wrong.</summary>
    public async Task<string?> SubmitOnlyAsync(HttpClient http, long i, string body, CancellationToken cancellationToken)
    {
        using var content = new StringContent(body, Encoding.UTF8, "application/json");
        using var response = await http.PostAsync(CoordinatorFor(i) + "/api/v1/transactions", content, cancellationToken);
        return response.IsSuccessStatusCode ? null : $"submit answered HTTP {(int)response.StatusCode}";
    }

    /// <summary>
    /// The baseline operation: the client calls the <see cref="Branches"/> participant endpoints itself,
    /// one after the other, with the coordinator's envelope. Null when every call answered 2xx, else what went wrong.
    /// </summary>
    public async Task<string?> BaselineAsync(HttpClient http, long i, CancellationToken cancellationToken)
    {
        for (var b = 0; b < Branches; b++)
        {
            var envelope = string.Create(CultureInfo.InvariantCulture, $$$"""{"gid":"base-{{{i}}}","branch":"b{{{b}}}","op":"action","payload":{"amount":1}}""");
            using var content = new StringContent(envelope, Encoding.UTF8, "application/json");
            using var response = await http.PostAsync(Url(false, b, "action"), content, cancellationToken);
            if (!response.IsSuccessStatusCode)
            {
                return $"participant answered HTTP {(int)response.StatusCode}";
            }
        }

        return null;
    }

    // A two-phase message: register, (the sender's local commit), submit and wait for delivery.
    private async Task<string> MessageAsync(HttpClient http, long i, bool abort, CancellationToken cancellationToken)
    {
        var gid = Gid(i);
        var branches = string.Join(",", Enumerable.Range(0, Branches).Select(b => $$"""{"name":"b{{b}}","action":"{{Url(false, b, "action")}}"}"""));
        var body = string.Create(CultureInfo.InvariantCulture,
            $$"""{"gid":"{{gid}}","protocol":"msg","payload":{"amount":1},"queryPrepared":"{{Url(abort, 0, "queryPrepared")}}","timeoutMs":{{(abort ? 1 : 60_000)}},"branches":[{{branches}}]}""");
        if (abort)
        {
            return await SubmitAsync(http, CoordinatorFor(i), body, "?wait=30s", cancellationToken);
        }

        var registered = await SubmitAsync(http, CoordinatorFor(i), body, "", cancellationToken);
        if (registered != "prepared")
        {
            return registered;
        }

        using var submitted = await http.PostAsync($"{CoordinatorFor(i)}/api/v1/transactions/{gid}/submit?wait=30s", null, cancellationToken);
        return StatusOf(await submitted.Content.ReadAsByteArrayAsync(cancellationToken)) ?? $"HTTP {(int)submitted.StatusCode}";
    }

    private static async Task<string> SubmitAsync(HttpClient http, string coordinatorUrl, string body, string query, CancellationToken cancellationToken)
    {
        using var content = new StringContent(body, Encoding.UTF8, "application/json");
        using var response = await http.PostAsync(coordinatorUrl + "/api/v1/transactions" + query, content, cancellationToken);
        return StatusOf(await response.Content.ReadAsByteArrayAsync(cancellationToken)) ?? $"HTTP {(int)response.StatusCode}";
    }

    // "/tx/..." answers 200, "/no/..." 409 (NoOpParticipant); the rest of the path is for people reading logs.
    private string Url(bool refuse, int branch, string op) => $"{ParticipantUrl}/{(refuse ? "no" : "tx")}/b{branch}/{op}";

    private string Gid(long i) => string.Create(CultureInfo.InvariantCulture, $"bench-{Protocol}-{i}-{Guid.NewGuid():N}");

    // The transaction's own status (the top-level "status"; branches have theirs one level down),
    // read without building a document: the load generator shares the cores with the coordinator.
    internal static string? StatusOf(ReadOnlySpan<byte> view)
    {
        var reader = new Utf8JsonReader(view);
        try
        {
            while (reader.Read())
            {
                if (reader.TokenType == JsonTokenType.PropertyName && reader.CurrentDepth == 1)
                {
                    var isStatus = reader.ValueTextEquals("status"u8);
                    reader.Read();
                    if (isStatus && reader.TokenType == JsonTokenType.String)
                    {
                        return reader.GetString();
                    }

                    reader.Skip();
                }
            }
        }
        catch (JsonException)
        {
            // not JSON (a proxy's error page): no status
        }

        return null;
    }
}
