using System.Data.Common;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Treaty.AspNetCore.Barrier;
using Treaty.AspNetCore.Data;
using Treaty.AspNetCore.InDoubt;
using Treaty.Testing;

namespace Treaty.Server.Tests.Support;

/// <summary>
/// A participant built on the kit, as a user would write one: <c>POST /branch</c> serves every
/// operation through <c>MapTreatyBranch</c> on its own SQLite file, keeping one <c>ledger</c> row
/// per (gid, branch) whose state follows the protocol (voted, pre-committed, committed, aborted);
/// the in-doubt resolver asks <paramref name="coordinator"/> after <paramref name="after"/>.
/// Answers of an operation can be held (<see cref="HoldAnswers"/>), so that a test can kill the
/// coordinator after every participant applied it but before the coordinator heard so.
/// </summary>
internal sealed class KitParticipant : IAsyncDisposable
{
    private readonly WebApplication _app;
    private readonly TempDir _dir;
    private readonly SqliteParticipantDatabase _database;

    private KitParticipant(WebApplication app, TempDir dir, SqliteParticipantDatabase database)
    {
        _app = app;
        _dir = dir;
        _database = database;
    }

    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, Gate> _held = new(StringComparer.Ordinal);

    /// <summary>From now on the answers of <paramref name="op"/> wait for <paramref name="gate"/> (the effect is already committed).</summary>
    public void HoldAnswers(string op, Gate gate) => _held[op] = gate;

    public string Url => _app.Urls.Single() + "/branch";

    public static async Task<KitParticipant> StartAsync(Uri coordinator, TimeSpan after)
    {
        var dir = new TempDir("treaty-kit-participant");
        var database = new SqliteParticipantDatabase(Path.Combine(dir.Path, "participant.db"));
        await database.ExecuteDdlAsync("CREATE TABLE IF NOT EXISTS ledger (gid TEXT NOT NULL, branch TEXT NOT NULL, state TEXT NOT NULL, PRIMARY KEY (gid, branch))", CancellationToken.None);
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        builder.Services.AddSingleton<ParticipantDatabase>(database);
        builder.Services.AddTreatyBarrier();
        builder.Services.AddTreatyInDoubtResolver(o =>
        {
            o.Coordinator = coordinator;
            o.After = after;
            o.PollInterval = TimeSpan.FromMilliseconds(200);
            o.FirstRecheckDelay = TimeSpan.FromMilliseconds(200);
            o.RequestTimeout = TimeSpan.FromSeconds(2);
        });
        var app = builder.Build();
        var participant = new KitParticipant(app, dir, database);
        app.Use(async (http, next) =>
        {
            if (!participant._held.TryGetValue(http.Request.Headers["Treaty-Op"].ToString(), out var gate))
            {
                await next();
                return;
            }

            // Buffer the answer: the operation commits in the participant's database, its answer
            // leaves only when the test opens the gate.
            var real = http.Response.Body;
            using var buffer = new MemoryStream();
            http.Response.Body = buffer;
            await next();
            await gate.Task;
            http.Response.Body = real;
            buffer.Position = 0;
            await buffer.CopyToAsync(real);
        });
        app.MapTreatyBranch("/branch", participant.HandleAsync);
        await app.StartAsync();
        return participant;
    }

    private async Task<BranchResult> HandleAsync(BranchContext context, CancellationToken cancellationToken)
    {
        var state = context.Op switch
        {
            "canCommit" or "prepare" or "try" => "voted",
            "preCommit" => "pre-committed",
            "doCommit" or "commit" or "confirm" => "committed",
            _ => "aborted",
        };
        await using var command = context.Transaction.CreateCommand(
            "INSERT INTO ledger (gid, branch, state) VALUES (@gid, @branch, @state) ON CONFLICT (gid, branch) DO UPDATE SET state = excluded.state",
            ("gid", context.Gid), ("branch", context.Branch), ("state", state));
        await command.ExecuteNonQueryAsync(cancellationToken);
        return context.Ok();
    }

    /// <summary>The ledger state of (gid, branch), or null.</summary>
    public async Task<string?> StateAsync(string gid, string branch)
    {
        await using var transaction = await _database.BeginAsync(CancellationToken.None);
        await using DbCommand command = transaction.CreateCommand("SELECT state FROM ledger WHERE gid = @gid AND branch = @branch", ("gid", gid), ("branch", branch));
        return await command.ExecuteScalarAsync() as string;
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var gate in _held.Values)
        {
            gate.Open();
        }

        try
        {
            await _app.StopAsync();
        }
        finally
        {
            await _app.DisposeAsync();
            _dir.Dispose();
        }
    }
}
