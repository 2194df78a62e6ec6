using System.CommandLine;
using Spectre.Console;
using Treaty.Client;
using Treaty.Core.Contracts;

namespace Treaty.Cli;

/// <summary><c>treaty tx list|show|retry|abort</c> against a running coordinator.</summary>
internal static class TxCommands
{
    public static Command Create()
    {
        var server = new Option<string>("--server") { Description = "Coordinator URL", DefaultValueFactory = _ => Server.TreatyServerDefaults.Urls, Recursive = true };
        var apiKey = new Option<string?>("--api-key")
        {
            Description = $"Key for a coordinator with keys (retry and abort need an operator key); {ApiKeyVariable} does the same without showing it in the process list",
            Recursive = true,
        };
        var tx = new Command("tx", "Inspect and operate transactions") { server, apiKey };

        var stuck = new Option<bool>("--stuck") { Description = "Only transactions waiting for an operator" };
        var status = new Option<string?>("--status") { Description = "pending, running, aborting, committed or aborted" };
        var limit = new Option<int>("--limit") { Description = "At most this many", DefaultValueFactory = _ => 50 };
        var list = new Command("list", "List transactions, newest first") { stuck, status, limit };
        list.SetAction((parse, ct) => RunAsync(parse.GetValue(server)!, parse.GetValue(apiKey) is { Length: > 0 } key ? key : Environment.GetEnvironmentVariable(ApiKeyVariable), client =>
            ListAsync(client, parse.GetValue(stuck), AnsiConsole.Console, ct, parse.GetValue(status), parse.GetValue(limit)), ct));

        var gid = new Argument<string>("gid") { Description = "Transaction id" };
        var show = new Command("show", "Show a transaction: branches, attempts, timeline") { gid };
        show.SetAction((parse, ct) => RunAsync(parse.GetValue(server)!, parse.GetValue(apiKey) is { Length: > 0 } key ? key : Environment.GetEnvironmentVariable(ApiKeyVariable), client => ShowAsync(client, parse.GetValue(gid)!, AnsiConsole.Console, ct), ct));

        var retry = new Command("retry", "Retry a transaction's waiting operations now (restarts their retry budget)") { gid };
        retry.SetAction((parse, ct) => RunAsync(parse.GetValue(server)!, parse.GetValue(apiKey) is { Length: > 0 } key ? key : Environment.GetEnvironmentVariable(ApiKeyVariable), client => RetryAsync(client, parse.GetValue(gid)!, AnsiConsole.Console, ct), ct));

        var reason = new Option<string?>("--reason") { Description = "Why (kept in the audit trail)" };
        var abort = new Command("abort", "Abort a transaction that has not passed its pivot (compensates what was applied)") { gid, reason };
        abort.SetAction((parse, ct) => RunAsync(parse.GetValue(server)!, parse.GetValue(apiKey) is { Length: > 0 } key ? key : Environment.GetEnvironmentVariable(ApiKeyVariable), async client =>
        {
            var view = await client.AbortAsync(parse.GetValue(gid)!, parse.GetValue(reason), ct);
            AnsiConsole.MarkupLineInterpolated($"Abort accepted: {view.Gid} is {view.Status}.");
            return 0;
        }, ct));

        tx.Subcommands.Add(list);
        tx.Subcommands.Add(show);
        tx.Subcommands.Add(retry);
        tx.Subcommands.Add(abort);
        return tx;
    }

    /// <summary>The environment variable read when <c>--api-key</c> is not given.</summary>
    internal const string ApiKeyVariable = "TREATY_API_KEY";

    private static async Task<int> RunAsync(string server, string? apiKey, Func<TreatyClient, Task<int>> action, CancellationToken cancellationToken)
    {
        if (!Uri.TryCreate(server, UriKind.Absolute, out var uri))
        {
            await Console.Error.WriteLineAsync($"--server: '{server}' is not an absolute URL.");
            return 2;
        }

        using var client = new TreatyClient(uri, apiKey);
        try
        {
            return await action(client);
        }
        catch (TreatyApiException ex)
        {
            AnsiConsole.MarkupLineInterpolated($"[red]{ex.StatusCode} {ex.Title}[/]: {ex.Detail}");
            return 1;
        }
        catch (HttpRequestException ex)
        {
            AnsiConsole.MarkupLineInterpolated($"[red]Cannot reach {server}[/]: {ex.Message}");
            return 1;
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            AnsiConsole.MarkupLineInterpolated($"[red]{server} did not answer in time[/]");
            return 1;
        }
    }

    public static async Task<int> ListAsync(TreatyClient client, bool stuckOnly, IAnsiConsole console, CancellationToken cancellationToken, string? status = null, int limit = 50)
    {
        var page = await client.ListAsync(new TransactionListQuery { Stuck = stuckOnly ? true : null, Status = status, Limit = limit }, cancellationToken);
        var table = new Table().Border(TableBorder.Simple);
        foreach (var column in new[] { "gid", "protocol", "status", "phase", "stuck", "branches", "updated", "reason" })
        {
            table.AddColumn(column);
        }

        foreach (var item in page.Items)
        {
            table.AddRow(
                Markup.Escape(item.Gid),
                item.Protocol,
                Colour(item.Status),
                item.Phase ?? "",
                item.Stuck ? "[red]yes[/]" : "no",
                item.Branches.ToString(System.Globalization.CultureInfo.InvariantCulture),
                item.UpdatedAt.ToString("u", System.Globalization.CultureInfo.InvariantCulture),
                Markup.Escape(item.Reason ?? ""));
        }

        console.Write(table);
        console.MarkupLineInterpolated($"{page.Items.Count} transaction(s){(page.NextCursor is null ? "" : " (more: use --limit)")}");
        return 0;
    }

    public static async Task<int> ShowAsync(TreatyClient client, string gid, IAnsiConsole console, CancellationToken cancellationToken)
    {
        var view = await client.GetAsync(gid, cancellationToken);
        if (view is null)
        {
            console.MarkupLineInterpolated($"[red]No transaction {gid}[/]");
            return 1;
        }

        console.MarkupLine($"[bold]{Markup.Escape(view.Gid)}[/] {view.Protocol} {Colour(view.Status)}{(view.Stuck ? " [red](stuck)[/]" : "")}");
        console.MarkupLineInterpolated($"phase: {view.Phase ?? "-"}   decision: {view.Decision ?? "undecided"}");
        if (view.Reason is not null)
        {
            console.MarkupLineInterpolated($"reason: {view.Reason}");
        }

        if (view.StuckOn is { } stuck)
        {
            console.MarkupLineInterpolated($"[red]stuck on {(stuck.Branch is null ? "" : stuck.Branch + ".")}{stuck.Op}[/] after {stuck.Attempts} attempts, last: {stuck.LastError ?? stuck.LastStatusCode?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "no answer"}");
        }

        var branches = new Table().Border(TableBorder.Simple);
        foreach (var column in new[] { "branch", "status", "vote", "op", "op status", "attempts", "last status", "last error" })
        {
            branches.AddColumn(column);
        }

        foreach (var branch in view.Branches)
        {
            AddOps(branches, branch.Name, branch.Status, branch.Vote, branch.Ops);
        }

        // The transaction's own operations (a message's queryPrepared).
        AddOps(branches, "(transaction)", "", null, view.Ops ?? new Dictionary<string, OperationView>());

        console.Write(branches);
        var events = await client.GetEventsAsync(gid, cancellationToken);
        var timeline = new Table().Border(TableBorder.Simple).Title("timeline");
        foreach (var column in new[] { "at", "event", "branch.op", "attempt", "status", "detail" })
        {
            timeline.AddColumn(column);
        }

        foreach (var e in events.Events)
        {
            timeline.AddRow(
                e.At.ToString("HH:mm:ss.fff", System.Globalization.CultureInfo.InvariantCulture),
                e.Kind,
                Markup.Escape(e.Branch is null ? e.Op ?? "" : $"{e.Branch}.{e.Op}"),
                e.Attempt?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "",
                e.StatusCode?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "",
                Markup.Escape(e.Detail ?? ""));
        }

        console.Write(timeline);
        return 0;
    }

    private static void AddOps(Table table, string name, string status, string? vote, IReadOnlyDictionary<string, OperationView> ops)
    {
        foreach (var (op, detail) in ops)
        {
            table.AddRow(
                Markup.Escape(name), Markup.Escape(status), vote ?? "", op, detail.Status,
                detail.Attempts.ToString(System.Globalization.CultureInfo.InvariantCulture),
                detail.LastStatusCode?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "",
                Markup.Escape(detail.LastError ?? ""));
        }
    }

    public static async Task<int> RetryAsync(TreatyClient client, string gid, IAnsiConsole console, CancellationToken cancellationToken)
    {
        var view = await client.RetryAsync(gid, cancellationToken);
        console.MarkupLineInterpolated($"Retry accepted: {view.Gid} is {view.Status}{(view.Stuck ? " (still stuck)" : "")}.");
        return 0;
    }

    private static string Colour(string status) => status switch
    {
        "committed" => "[green]committed[/]",
        "aborted" => "[yellow]aborted[/]",
        "aborting" => "[yellow]aborting[/]",
        _ => status,
    };
}
