using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Microsoft.Data.Sqlite;
using Treaty.Core.Contracts;

namespace Shop.Infrastructure;

/// <summary>A forward operation (saga action) or a backward one (compensation).</summary>
internal enum BranchDirection
{
    Forward,
    Backward,
}

/// <summary>One branch call as the coordinator made it.</summary>
internal sealed record BranchCall(string Gid, string Branch, string Op, JsonElement Payload);

/// <summary>What a branch handler decided; recorded in <c>branch_log</c> and sent back.</summary>
/// <param name="StatusCode">2xx, or a definitive 4xx (nothing applied).</param>
/// <param name="Body">The JSON answer.</param>
/// <param name="Applied">True when this call changed business data (counted by <c>/_faults/calls</c>).</param>
internal sealed record BranchEffect(int StatusCode, string Body, bool Applied);

/// <summary>What a branch handler gets: the open transaction and the call.</summary>
internal sealed record BranchContext(
    SqliteConnection Connection,
    SqliteTransaction Transaction,
    BranchCall Call,
    DateTimeOffset Now,
    CancellationToken CancellationToken);

/// <summary>
/// The branch barrier of this sample: a row per (gid, branch, op) written in the same SQLite
/// transaction as the handler's own effect. So a duplicate call replays the first answer without
/// applying anything again; a compensation that arrives before (or instead of) its action is
/// recorded, and the action arriving after it does nothing (answers 200 with <c>skipped</c>), which
/// prevents a "hanging" reservation. Treaty.AspNetCore will offer this as a reusable kit.
/// </summary>
internal static class BranchBarrier
{
    public const string Schema = """
        CREATE TABLE IF NOT EXISTS branch_log (
            gid TEXT NOT NULL,
            branch TEXT NOT NULL,
            op TEXT NOT NULL,
            direction TEXT NOT NULL CHECK (direction IN ('forward', 'backward')),
            status_code INTEGER NOT NULL,
            body TEXT NOT NULL,
            applied INTEGER NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (gid, branch, op)
        );
        """;

    private const int MaxFieldLength = 256;

    /// <summary>Reads the call from the JSON body, falling back to the Treaty-* headers for missing fields.</summary>
    public static async Task<(BranchCall? Call, IResult? Error)> ReadAsync(HttpRequest request, CancellationToken cancellationToken)
    {
        var (body, error) = await JsonBody.ReadAsync(request, ShopJsonContext.Web.BranchCallBody, cancellationToken);
        if (body is null)
        {
            return (null, error);
        }

        var errors = new Dictionary<string, string[]>(StringComparer.Ordinal);
        var gid = Field(body.Gid, request.Headers["Treaty-Gid"], "gid", errors);
        var branch = Field(body.Branch, request.Headers["Treaty-Branch"], "branch", errors);
        var op = Field(body.Op, request.Headers["Treaty-Op"], "op", errors);
        if (errors.Count > 0)
        {
            return (null, Problems.Validation(errors));
        }

        return (new BranchCall(gid!, branch!, op!, body.Payload ?? default), null);
    }

    /// <summary>Reads the branch call from the request and runs it through the barrier; counts applied effects for /_faults.</summary>
    public static async Task<IResult> HandleAsync(
        HttpContext http,
        ShopDatabase database,
        BranchDirection direction,
        Func<BranchContext, Task<BranchEffect>> handler,
        TimeProvider timeProvider,
        FaultRegistry faults)
    {
        var (call, error) = await ReadAsync(http.Request, http.RequestAborted);
        if (call is null)
        {
            return error!;
        }

        var path = http.Request.Path.Value!;
        return await RunAsync(database, call, direction, timeProvider, handler, () => faults.MarkApplied(path), http.RequestAborted);
    }

    /// <summary>
    /// Runs <paramref name="handler"/> once per (gid, branch, op) and records its answer with its effect.
    /// </summary>
    public static async Task<IResult> RunAsync(
        ShopDatabase database,
        BranchCall call,
        BranchDirection direction,
        TimeProvider timeProvider,
        Func<BranchContext, Task<BranchEffect>> handler,
        Action? onApplied,
        CancellationToken cancellationToken)
    {
        var (effect, replayed) = await database.WriteAsync(async (connection, transaction) =>
        {
            await using (var find = Sql.Command(connection, transaction,
                "SELECT status_code, body FROM branch_log WHERE gid = $gid AND branch = $branch AND op = $op",
                ("$gid", call.Gid), ("$branch", call.Branch), ("$op", call.Op)))
            await using (var reader = await find.ExecuteReaderAsync(cancellationToken))
            {
                if (await reader.ReadAsync(cancellationToken))
                {
                    return (new BranchEffect(reader.GetInt32(0), reader.GetString(1), false), true);
                }
            }

            var now = timeProvider.GetUtcNow();
            BranchEffect result;
            if (direction == BranchDirection.Forward && await HasBackwardAsync(connection, transaction, call, cancellationToken))
            {
                // Its compensation came first: applying the action now would leave it applied forever.
                result = Skipped(call, "the compensation of this branch arrived before its action");
            }
            else
            {
                // A compensation runs its handler even when no action was recorded: each handler
                // undoes exactly what its own tables say this gid did, which is nothing for a
                // "null compensation".
                result = await handler(new BranchContext(connection, transaction, call, now, cancellationToken));
            }

            await Sql.ExecuteAsync(connection, transaction,
                """
                INSERT INTO branch_log (gid, branch, op, direction, status_code, body, applied, created_at)
                VALUES ($gid, $branch, $op, $direction, $status, $body, $applied, $at)
                """,
                cancellationToken,
                ("$gid", call.Gid), ("$branch", call.Branch), ("$op", call.Op),
                ("$direction", direction == BranchDirection.Forward ? "forward" : "backward"),
                ("$status", result.StatusCode), ("$body", result.Body), ("$applied", result.Applied ? 1 : 0),
                ("$at", Sql.Timestamp(now)));
            return (result, false);
        }, cancellationToken);

        if (effect.Applied && !replayed)
        {
            onApplied?.Invoke();
        }

        return Problems.Stored(effect.StatusCode, effect.Body);
    }

    /// <summary>A 200 that says nothing was done, and why.</summary>
    public static BranchEffect Skipped(BranchCall call, string reason) => new(
        StatusCodes.Status200OK,
        JsonSerializer.Serialize(new BranchSkipped(call.Gid, call.Branch, call.Op, true, reason), ShopJsonContext.Web.BranchSkipped),
        Applied: false);

    public static BranchEffect Ok<T>(T value, System.Text.Json.Serialization.Metadata.JsonTypeInfo<T> typeInfo, bool applied) =>
        new(StatusCodes.Status200OK, JsonSerializer.Serialize(value, typeInfo), applied);

    /// <summary>A definitive failure: nothing was applied.</summary>
    public static BranchEffect Fail(int status, string type, string title, string detail) =>
        new(status, Problems.Json(status, type, title, detail), Applied: false);

    /// <summary>A payload that does not fit: a definitive 400 naming the fields.</summary>
    public static BranchEffect Invalid(IReadOnlyDictionary<string, string[]> errors) =>
        new(StatusCodes.Status400BadRequest,
            Problems.Json(StatusCodes.Status400BadRequest, ProblemTypes.Validation, "Invalid payload",
                "The transaction payload is invalid: " + string.Join(", ", errors.Keys) + ".", errors),
            Applied: false);

    private static async Task<bool> HasBackwardAsync(SqliteConnection connection, SqliteTransaction transaction, BranchCall call, CancellationToken cancellationToken)
    {
        await using var command = Sql.Command(connection, transaction,
            "SELECT 1 FROM branch_log WHERE gid = $gid AND branch = $branch AND direction = 'backward' LIMIT 1",
            ("$gid", call.Gid), ("$branch", call.Branch));
        return await command.ExecuteScalarAsync(cancellationToken) is not null;
    }

    private static string? Field(string? fromBody, string? fromHeader, string name, Dictionary<string, string[]> errors)
    {
        var value = string.IsNullOrEmpty(fromBody) ? fromHeader : fromBody;
        if (string.IsNullOrEmpty(value))
        {
            errors[name] = [$"'{name}' is required (in the body, or the Treaty-{char.ToUpperInvariant(name[0])}{name[1..]} header)."];
            return null;
        }

        if (value.Length > MaxFieldLength)
        {
            errors[name] = [$"'{name}' is longer than {MaxFieldLength} characters."];
            return null;
        }

        if (!string.IsNullOrEmpty(fromBody) && !string.IsNullOrEmpty(fromHeader) && !string.Equals(fromBody, fromHeader, StringComparison.Ordinal))
        {
            errors[name] = [$"The body's '{name}' and the Treaty-{char.ToUpperInvariant(name[0])}{name[1..]} header differ."];
            return null;
        }

        return value;
    }
}
