using System.Collections.Concurrent;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Treaty.AspNetCore.Barrier;
using Treaty.AspNetCore.Data;

namespace Treaty.AspNetCore.Tests.Barrier;

/// <summary>One answer of the participant, as the coordinator sees it.</summary>
public sealed record BranchAnswer(int Status, string Body, string? Outcome, string? ContentType);

/// <summary>
/// A participant on real Kestrel (127.0.0.1, a free port) with one barrier-protected endpoint,
/// <c>POST /branch</c>, whose handler writes +1 (forward ops) or -1 (compensations) to a
/// <c>ledger</c> table in the barrier's transaction. The payload scripts it:
/// <c>{"fail": true}</c> writes, then answers a definitive 409; <c>{"delayMs": n}</c> holds the
/// transaction open a while after writing. <see cref="ThrowOnce"/> makes the next call of a gid
/// write and then throw.
/// </summary>
public sealed class BarrierHost : IAsyncDisposable
{
    public const string InsufficientFunds = "https://shop.example/problems/insufficient-funds";

    private const string LedgerSchema = "CREATE TABLE IF NOT EXISTS ledger (gid TEXT NOT NULL, branch TEXT NOT NULL, op TEXT NOT NULL, delta INTEGER NOT NULL)";

    private readonly WebApplication _app;
    private readonly ConcurrentDictionary<(string Gid, string Op), int> _runs = new();
    private readonly ConcurrentDictionary<string, bool> _throwOnce = new(StringComparer.Ordinal);

    private BarrierHost(WebApplication app, ParticipantDatabase database)
    {
        _app = app;
        Database = database;
    }

    public ParticipantDatabase Database { get; }

    public HttpClient Client { get; private set; } = null!;

    /// <param name="database">The participant database.</param>
    /// <param name="services">More services (e.g. the retention service).</param>
    public static async Task<BarrierHost> StartAsync(ParticipantDatabase database, Action<IServiceCollection>? services = null)
    {
        await database.ExecuteDdlAsync(LedgerSchema, CancellationToken.None);

        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        builder.Logging.AddFilter("Treaty.AspNetCore.Barrier.BranchBarrier", LogLevel.None); // the 500 test logs an expected error
        builder.Services.AddSingleton(database);
        builder.Services.AddTreatyBarrier();
        services?.Invoke(builder.Services);
        var app = builder.Build();
        var host = new BarrierHost(app, database);
        app.MapTreatyBranch("/branch", host.HandleAsync);
        await app.StartAsync();
        host.Client = new HttpClient { BaseAddress = new Uri(app.Urls.Single()), Timeout = TimeSpan.FromSeconds(30) };
        return host;
    }

    /// <summary>How many times the handler ran for (gid, op), whether or not its transaction committed.</summary>
    public int Runs(string gid, string op) => _runs.TryGetValue((gid, op), out var runs) ? runs : 0;

    /// <summary>The next call of <paramref name="gid"/> writes its ledger row and then throws.</summary>
    public void ThrowOnce(string gid) => _throwOnce[gid] = true;

    /// <summary>Posts the standard envelope with matching headers.</summary>
    public Task<BranchAnswer> CallAsync(string gid, string op, string payload = "{}", string branch = "b1") =>
        PostAsync(
            $$"""{"gid":"{{gid}}","branch":"{{branch}}","op":"{{op}}","payload":{{payload}}}""",
            new Dictionary<string, string> { ["Treaty-Gid"] = gid, ["Treaty-Branch"] = branch, ["Treaty-Op"] = op, ["Idempotency-Key"] = $"{gid}/{branch}/{op}" });

    /// <summary>Posts <paramref name="body"/> as it is, with <paramref name="headers"/>.</summary>
    public async Task<BranchAnswer> PostAsync(string body, IReadOnlyDictionary<string, string>? headers = null)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, "/branch")
        {
            Content = new StringContent(body, Encoding.UTF8, new MediaTypeHeaderValue("application/json")),
        };
        foreach (var (name, value) in headers ?? new Dictionary<string, string>())
        {
            request.Headers.TryAddWithoutValidation(name, value);
        }

        using var response = await Client.SendAsync(request);
        return new BranchAnswer(
            (int)response.StatusCode,
            await response.Content.ReadAsStringAsync(),
            response.Headers.TryGetValues(TreatyBarrier.OutcomeHeader, out var values) ? values.Single() : null,
            response.Content.Headers.ContentType?.MediaType);
    }

    /// <summary>The committed ledger rows of <paramref name="gid"/>: (forward +1 rows, compensation -1 rows).</summary>
    public async Task<(int Applied, int Compensated)> LedgerAsync(string gid)
    {
        await using var transaction = await Database.BeginAsync(CancellationToken.None);
        await using var command = transaction.CreateCommand(
            "SELECT coalesce(sum(CASE WHEN delta > 0 THEN 1 ELSE 0 END), 0), coalesce(sum(CASE WHEN delta < 0 THEN 1 ELSE 0 END), 0) FROM ledger WHERE gid = @gid",
            ("gid", gid));
        await using var reader = await command.ExecuteReaderAsync();
        await reader.ReadAsync();
        return (Convert.ToInt32(reader.GetValue(0)), Convert.ToInt32(reader.GetValue(1)));
    }

    /// <summary>The ops recorded in the barrier table for (gid, b1).</summary>
    public async Task<IReadOnlyList<string>> BarrierRowsAsync(string gid, string branch = "b1")
    {
        await using var transaction = await Database.BeginAsync(CancellationToken.None);
        await using var command = transaction.CreateCommand(
            "SELECT op FROM treaty_barrier WHERE gid = @gid AND branch = @branch ORDER BY op", ("gid", gid), ("branch", branch));
        await using var reader = await command.ExecuteReaderAsync();
        var ops = new List<string>();
        while (await reader.ReadAsync())
        {
            ops.Add(reader.GetString(0));
        }

        return ops;
    }

    /// <summary>The stage of (gid, branch) in the prepared table, or null when it is not in doubt.</summary>
    public async Task<string?> PreparedStageAsync(string gid, string branch = "b1")
    {
        await using var transaction = await Database.BeginAsync(CancellationToken.None);
        await using var command = transaction.CreateCommand(
            "SELECT stage FROM treaty_prepared WHERE gid = @gid AND branch = @branch", ("gid", gid), ("branch", branch));
        return (string?)await command.ExecuteScalarAsync();
    }

    public async ValueTask DisposeAsync()
    {
        Client?.Dispose();
        await _app.StopAsync();
        await _app.DisposeAsync();
    }

    private async Task<BranchResult> HandleAsync(BranchContext context, CancellationToken cancellationToken)
    {
        _runs.AddOrUpdate((context.Gid, context.Op), 1, (_, runs) => runs + 1);
        var delta = BarrierRules.KindOf(context.Op) == BarrierOpKind.Compensation ? -1 : 1;
        await using (var insert = context.Transaction.CreateCommand(
            "INSERT INTO ledger (gid, branch, op, delta) VALUES (@gid, @branch, @op, @delta)",
            ("gid", context.Gid), ("branch", context.Branch), ("op", context.Op), ("delta", delta)))
        {
            await insert.ExecuteNonQueryAsync(cancellationToken);
        }

        if (context.Payload.ValueKind == JsonValueKind.Object && context.Payload.TryGetProperty("delayMs", out var delay))
        {
            await Task.Delay(delay.GetInt32(), cancellationToken);
        }

        if (_throwOnce.TryRemove(context.Gid, out _))
        {
            throw new InvalidOperationException("The wallet service is down.");
        }

        if (context.Payload.ValueKind == JsonValueKind.Object && context.Payload.TryGetProperty("fail", out var fail) && fail.GetBoolean())
        {
            return context.Fail(409, InsufficientFunds, "Insufficient funds", "The wallet holds less than the price.");
        }

        // A fresh token per run: a replayed answer carries the first run's token.
        using var body = JsonDocument.Parse($$"""{"gid":"{{context.Gid}}","op":"{{context.Op}}","token":"{{Guid.NewGuid():N}}"}""");
        return context.Ok(body.RootElement);
    }
}
