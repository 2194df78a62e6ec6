using System.Collections.Concurrent;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Treaty.AspNetCore.Barrier;
using Treaty.AspNetCore.Data;
using Treaty.AspNetCore.InDoubt;
using Treaty.AspNetCore.PreparedTransactions;
using Treaty.AspNetCore.Tests.Barrier;

namespace Treaty.AspNetCore.Tests.InDoubt;

/// <summary>How to start an <see cref="InDoubtParticipant"/>. No <see cref="Coordinator"/>: no resolver.</summary>
public sealed record ParticipantSetup(ParticipantDatabase Database, TimeProvider Time)
{
    public Uri? Coordinator { get; init; }

    public TimeSpan After { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>Long by default: tests with a manual clock run passes themselves.</summary>
    public TimeSpan PollInterval { get; init; } = TimeSpan.FromHours(1);

    public TimeSpan FirstRecheckDelay { get; init; } = TimeSpan.FromSeconds(5);

    public TimeSpan MaxRecheckDelay { get; init; } = TimeSpan.FromMinutes(1);

    /// <summary>Also map <c>/native</c>, a PostgreSQL prepared-transaction branch.</summary>
    public bool PreparedTransactions { get; init; }

    /// <summary>Where the kit's log lines go, every level, with their scopes (none: not captured).</summary>
    public CapturingLoggerProvider? Logs { get; init; }
}

/// <summary>
/// A stock-keeping participant on real Kestrel (127.0.0.1, a free port), restartable on the same
/// database: <c>POST /branch</c> serves every op of every protocol through
/// <see cref="BarrierEndpointRouteBuilderExtensions.MapTreatyBranch"/>; a vote (prepare, canCommit,
/// try, action) reserves one unit of the payload's <c>sku</c> (default <c>book</c>) and writes a
/// <c>holds</c> row, preCommit marks it, the commit ops mark it committed, the undo ops release
/// it. <c>POST /native</c> (optional) does the same prepare as a PostgreSQL prepared transaction.
/// <c>POST /refuse</c> votes NO (409) once a vote of the same gid answered YES here,
/// so a coordinator aborts after this participant voted YES. Ops can be made unavailable (503
/// before the barrier), slow, or throw once.
/// </summary>
public sealed class InDoubtParticipant : IAsyncDisposable
{
    public const string DefaultSku = "book";
    public const int InitialStock = 100;

    private const string StockSchema = "CREATE TABLE IF NOT EXISTS stock (sku TEXT PRIMARY KEY, available INTEGER NOT NULL)";
    private const string HoldsSchema = "CREATE TABLE IF NOT EXISTS holds (gid TEXT NOT NULL, branch TEXT NOT NULL, state TEXT NOT NULL, PRIMARY KEY (gid, branch))";

    private readonly WebApplication _app;
    private readonly ConcurrentDictionary<(string Gid, string Op), int> _runs = new();
    private readonly ConcurrentDictionary<(string Gid, string Op), bool> _resolverRuns = new();
    private readonly ConcurrentDictionary<(string Gid, string Op), ConcurrentQueue<string>> _outcomes = new();
    private readonly ConcurrentDictionary<string, int> _unavailable = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, int> _refusedWith503 = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, TimeSpan> _delays = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, bool> _throwOnce = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, TaskCompletionSource> _prepared = new(StringComparer.Ordinal);

    private InDoubtParticipant(WebApplication app, ParticipantSetup setup)
    {
        _app = app;
        Setup = setup;
    }

    public ParticipantSetup Setup { get; }

    public ParticipantDatabase Database => Setup.Database;

    public HttpClient Client { get; private set; } = null!;

    public Uri BaseAddress { get; private set; } = null!;

    internal InDoubtResolver Resolver => _app.Services.GetRequiredService<InDoubtResolver>();

    public static async Task<InDoubtParticipant> StartAsync(ParticipantSetup setup)
    {
        await setup.Database.ExecuteDdlAsync(StockSchema, CancellationToken.None);
        await setup.Database.ExecuteDdlAsync(HoldsSchema, CancellationToken.None);
        await SeedAsync(setup.Database, DefaultSku, InitialStock);

        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        builder.Logging.AddFilter("Treaty.AspNetCore", LogLevel.None); // expected errors (500s, conflicts) are asserted, not logged
        if (setup.Logs is { } logs)
        {
            builder.Logging.AddProvider(logs);
            builder.Logging.AddFilter<CapturingLoggerProvider>("Treaty.AspNetCore", LogLevel.Debug);
        }
        builder.Services.AddSingleton(setup.Database);
        builder.Services.AddSingleton(setup.Time);
        builder.Services.AddTreatyBarrier();
        if (setup.Coordinator is { } coordinator)
        {
            builder.Services.AddTreatyInDoubtResolver(o =>
            {
                o.Coordinator = coordinator;
                o.After = setup.After;
                o.PollInterval = setup.PollInterval;
                o.FirstRecheckDelay = setup.FirstRecheckDelay;
                o.MaxRecheckDelay = setup.MaxRecheckDelay;
                o.RequestTimeout = TimeSpan.FromSeconds(5);
            });
        }

        var app = builder.Build();
        var participant = new InDoubtParticipant(app, setup);
        app.Use(participant.ObserveAsync);
        app.MapTreatyBranch("/branch", participant.HandleAsync);
        app.MapPost("/refuse", (Delegate)participant.RefuseAsync);
        if (setup.PreparedTransactions)
        {
            app.MapTreatyPreparedTransactionBranch("/native", participant.HandleAsync);
        }

        await app.StartAsync();
        participant.BaseAddress = new Uri(app.Urls.Single() + "/");
        participant.Client = new HttpClient { BaseAddress = participant.BaseAddress, Timeout = TimeSpan.FromSeconds(30) };
        if (setup.Coordinator is not null)
        {
            // The pass run at start is over before a test moves the clock, so every later pass is the test's.
            await participant.Resolver.FirstPass.WaitAsync(TimeSpan.FromSeconds(30));
        }

        return participant;
    }

    /// <summary>Adds a stock row (nothing when it exists).</summary>
    public static async Task SeedAsync(ParticipantDatabase database, string sku, int available)
    {
        await using var transaction = await database.BeginAsync(CancellationToken.None);
        await using (var insert = transaction.CreateCommand(
            "INSERT INTO stock (sku, available) VALUES (@sku, @available) ON CONFLICT (sku) DO NOTHING", ("sku", sku), ("available", available)))
        {
            await insert.ExecuteNonQueryAsync();
        }

        await transaction.CommitAsync(CancellationToken.None);
    }

    public Uri Url(string path) => new(BaseAddress, path);

    /// <summary>How many times the handler ran for (gid, op), committed or not.</summary>
    public int Runs(string gid, string op) => _runs.GetValueOrDefault((gid, op));

    /// <summary>Whether the in-doubt resolver (not a coordinator's call) ran (gid, op).</summary>
    public bool RanByResolver(string gid, string op) => _resolverRuns.GetValueOrDefault((gid, op));

    /// <summary>The <c>Treaty-Barrier</c> header of every answer to (gid, op) over HTTP, in order (<c>503</c> for a refused call).</summary>
    public IReadOnlyList<string> Answers(string gid, string op) =>
        _outcomes.TryGetValue((gid, op), out var queue) ? [.. queue] : [];

    /// <summary>Calls of <paramref name="op"/> are answered 503 before they reach the barrier until <see cref="Available"/>.</summary>
    public void Unavailable(string op) => _unavailable[op] = 1;

    public void Available(string op) => _unavailable.TryRemove(op, out _);

    /// <summary>How many calls of <paramref name="op"/> were refused with 503.</summary>
    public int RefusedWith503(string op) => _refusedWith503.GetValueOrDefault(op);

    /// <summary>The handler of <paramref name="op"/> waits this long after writing.</summary>
    public void Delay(string op, TimeSpan delay) => _delays[op] = delay;

    /// <summary>The next run of <paramref name="op"/> writes, then throws.</summary>
    public void ThrowOnce(string op) => _throwOnce[op] = true;

    public Task<BranchAnswer> CallAsync(string gid, string op, string payload = "{}", string branch = "b1", string path = "branch") =>
        PostAsync(path, $$"""{"gid":"{{gid}}","branch":"{{branch}}","op":"{{op}}","payload":{{payload}}}""", gid, branch, op);

    /// <summary>The state of the hold of (gid, branch): held, pre-committed, committed, or null when there is none.</summary>
    public async Task<string?> HoldAsync(string gid, string branch = "b1")
    {
        await using var transaction = await Database.BeginAsync(CancellationToken.None);
        await using var select = transaction.CreateCommand("SELECT state FROM holds WHERE gid = @gid AND branch = @branch", ("gid", gid), ("branch", branch));
        return (string?)await select.ExecuteScalarAsync();
    }

    public async Task<int> AvailableAsync(string sku = DefaultSku)
    {
        await using var transaction = await Database.BeginAsync(CancellationToken.None);
        await using var select = transaction.CreateCommand("SELECT available FROM stock WHERE sku = @sku", ("sku", sku));
        return Convert.ToInt32(await select.ExecuteScalarAsync());
    }

    /// <summary>The prepared-table row of (gid, branch): its stage, checks and prepared transaction, or null.</summary>
    public async Task<(string Stage, int Checks, string? Transaction)?> PreparedAsync(string gid, string branch = "b1")
    {
        await using var transaction = await Database.BeginAsync(CancellationToken.None);
        await using var select = transaction.CreateCommand("SELECT stage, checks, xact FROM treaty_prepared WHERE gid = @gid AND branch = @branch", ("gid", gid), ("branch", branch));
        await using var reader = await select.ExecuteReaderAsync();
        return await reader.ReadAsync() ? (reader.GetString(0), reader.GetInt32(1), reader.IsDBNull(2) ? null : reader.GetString(2)) : null;
    }

    /// <summary>One resolver pass, as the background service would run it.</summary>
    internal Task<IReadOnlyList<InDoubtResolution>> ResolveAsync() => Resolver.ResolveDueAsync(CancellationToken.None);

    /// <summary>Completes when a <c>/branch</c> or <c>/native</c> vote (prepare, canCommit) of <paramref name="gid"/> has answered 2xx.</summary>
    public Task PreparedAnswered(string gid) => _prepared.GetOrAdd(gid, _ => new(TaskCreationOptions.RunContinuationsAsynchronously)).Task;

    public async ValueTask DisposeAsync()
    {
        Client?.Dispose();
        await _app.StopAsync();
        await _app.DisposeAsync();
    }

    private async Task<BranchAnswer> PostAsync(string path, string body, string gid, string branch, string op)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, path)
        {
            Content = new StringContent(body, Encoding.UTF8, new MediaTypeHeaderValue("application/json")),
        };
        request.Headers.Add("Treaty-Gid", gid);
        request.Headers.Add("Treaty-Branch", branch);
        request.Headers.Add("Treaty-Op", op);
        request.Headers.Add("Idempotency-Key", $"{gid}/{branch}/{op}");
        using var response = await Client.SendAsync(request);
        return new BranchAnswer(
            (int)response.StatusCode,
            await response.Content.ReadAsStringAsync(),
            response.Headers.TryGetValues(TreatyBarrier.OutcomeHeader, out var values) ? values.Single() : null,
            response.Content.Headers.ContentType?.MediaType);
    }

    private async Task ObserveAsync(HttpContext http, RequestDelegate next)
    {
        var gid = http.Request.Headers["Treaty-Gid"].ToString();
        var op = http.Request.Headers["Treaty-Op"].ToString();
        var path = http.Request.Path.Value;
        if (path is not ("/branch" or "/native"))
        {
            await next(http);
            return;
        }

        var outcomes = _outcomes.GetOrAdd((gid, op), _ => new ConcurrentQueue<string>());
        if (_unavailable.ContainsKey(op))
        {
            _refusedWith503.AddOrUpdate(op, 1, (_, n) => n + 1);
            outcomes.Enqueue("503");
            http.Response.StatusCode = 503;
            return;
        }

        await next(http);
        outcomes.Enqueue(http.Response.Headers[TreatyBarrier.OutcomeHeader].ToString() is { Length: > 0 } outcome ? outcome : http.Response.StatusCode.ToString(System.Globalization.CultureInfo.InvariantCulture));
        if (op is "prepare" or "canCommit" && http.Response.StatusCode is >= 200 and < 300)
        {
            _prepared.GetOrAdd(gid, _ => new(TaskCreationOptions.RunContinuationsAsynchronously)).TrySetResult();
        }
    }

    private async Task<IResult> RefuseAsync(HttpContext http)
    {
        var gid = http.Request.Headers["Treaty-Gid"].ToString();
        var op = http.Request.Headers["Treaty-Op"].ToString();
        if (op is "prepare" or "canCommit")
        {
            await PreparedAnswered(gid).WaitAsync(TimeSpan.FromSeconds(20));
            return Results.Problem(statusCode: 409, type: "https://shop.example/problems/out-of-stock", title: "Out of stock");
        }

        return Results.Json(new Dictionary<string, string> { ["op"] = op });
    }

    private async Task<BranchResult> HandleAsync(BranchContext context, CancellationToken cancellationToken)
    {
        _runs.AddOrUpdate((context.Gid, context.Op), 1, (_, n) => n + 1);
        if (context.IsInDoubtResolution)
        {
            _resolverRuns[(context.Gid, context.Op)] = true;
        }

        // {"sku": s} for every branch, or {"skus": {branch: s}} for one per branch (a transaction's payload is shared)
        var sku = DefaultSku;
        if (context.Payload.ValueKind == JsonValueKind.Object)
        {
            if (context.Payload.TryGetProperty("skus", out var skus) && skus.TryGetProperty(context.Branch, out var mine))
            {
                sku = mine.GetString()!;
            }
            else if (context.Payload.TryGetProperty("sku", out var given))
            {
                sku = given.GetString()!;
            }
        }
        switch (context.Op)
        {
            case "prepare" or "canCommit" or "try" or "action":
                if (context.Payload.ValueKind == JsonValueKind.Object && context.Payload.TryGetProperty("tempTable", out var temp) && temp.GetBoolean())
                {
                    // PostgreSQL cannot PREPARE a transaction that touched a temporary table
                    await using var create = context.Transaction.CreateCommand("CREATE TEMP TABLE scratch (x integer)");
                    await create.ExecuteNonQueryAsync(cancellationToken);
                }

                await ExecuteAsync(context, "INSERT INTO holds (gid, branch, state) VALUES (@gid, @branch, 'held')", cancellationToken);
                await ExecuteAsync(context, "UPDATE stock SET available = available - 1 WHERE sku = @sku", cancellationToken, sku);
                break;
            case "preCommit":
                await ExecuteAsync(context, "UPDATE holds SET state = 'pre-committed' WHERE gid = @gid AND branch = @branch", cancellationToken);
                break;
            case "commit" or "doCommit" or "confirm":
                await ExecuteAsync(context, "UPDATE holds SET state = 'committed' WHERE gid = @gid AND branch = @branch", cancellationToken);
                break;
            default: // rollback, abort, cancel, compensate
                await ExecuteAsync(context, "DELETE FROM holds WHERE gid = @gid AND branch = @branch", cancellationToken);
                await ExecuteAsync(context, "UPDATE stock SET available = available + 1 WHERE sku = @sku", cancellationToken, sku);
                break;
        }

        if (_delays.TryGetValue(context.Op, out var delay))
        {
            await Task.Delay(delay, cancellationToken);
        }

        if (_throwOnce.TryRemove(context.Op, out _))
        {
            throw new InvalidOperationException("The warehouse system is down.");
        }

        if (context.Payload.ValueKind == JsonValueKind.Object && context.Payload.TryGetProperty("fail", out var fail) && fail.GetBoolean())
        {
            return context.Fail(409, "https://shop.example/problems/out-of-stock", "Out of stock");
        }

        return context.Ok();
    }

    private static async Task ExecuteAsync(BranchContext context, string sql, CancellationToken cancellationToken, string? sku = null)
    {
        await using var command = sku is null
            ? context.Transaction.CreateCommand(sql, ("gid", context.Gid), ("branch", context.Branch))
            : context.Transaction.CreateCommand(sql, ("sku", sku));
        await command.ExecuteNonQueryAsync(cancellationToken);
    }
}
