using System.CommandLine;
using System.Text.Json;
using Spectre.Console;
using Treaty.Client;
using Treaty.Core.Contracts;
using Treaty.Core.Serialization;

namespace Treaty.Cli;

/// <summary><c>treaty tx list|show|retry|abort|instances</c> against a running coordinator.</summary>
internal static class TxCommands
{
    public static Command Create()
    {
        var server = new Option<string>("--server") { Description = "Coordinator URL", DefaultValueFactory = _ => Server.TreatyServerDefaults.Urls, Recursive = true };
        var output = OutputFormat.CreateOption();
        var apiKey = new Option<string?>(ApiKeyOption)
        {
            Description = $"Key for a coordinator with keys (retry and abort need an operator key); {ApiKeyVariable} does the same without showing it in the process list",
            Recursive = true,
        };
        var tx = new Command("tx", "Inspect and operate transactions") { server, output, apiKey };

        var stuck = new Option<bool>("--stuck") { Description = "Only transactions waiting for an operator" };
        var status = new Option<string?>("--status") { Description = "pending, running, aborting, committed or aborted" };
        var limit = new Option<int>("--limit") { Description = "At most this many", DefaultValueFactory = _ => 50 };
        var list = new Command("list", "List transactions, newest first") { stuck, status, limit };
        list.SetAction((parse, ct) => RunAsync(parse, parse.GetValue(server)!, (client, console, _) => parse.GetValue(output) == OutputFormat.Json
            ? ListJsonAsync(client, parse.GetValue(stuck), parse.InvocationConfiguration.Output, ct, parse.GetValue(status), parse.GetValue(limit))
            : ListAsync(client, parse.GetValue(stuck), console, ct, parse.GetValue(status), parse.GetValue(limit)), ct));

        var gid = new Argument<string>("gid") { Description = "Transaction id" };
        var show = new Command("show", "Show a transaction: branches, attempts, timeline") { gid };
        show.SetAction((parse, ct) => RunAsync(parse, parse.GetValue(server)!, (client, console, error) => parse.GetValue(output) == OutputFormat.Json
            ? ShowJsonAsync(client, parse.GetValue(gid)!, parse.InvocationConfiguration.Output, error, ct)
            : ShowAsync(client, parse.GetValue(gid)!, console, ct, error), ct));

        var retry = new Command("retry", "Retry a transaction's waiting operations now (restarts their retry budget)") { gid };
        retry.SetAction((parse, ct) => RunAsync(parse, parse.GetValue(server)!, async (client, console, _) =>
        {
            var view = await client.RetryAsync(parse.GetValue(gid)!, ct);
            return Print(parse, console, view, $"Retry accepted: {view.Gid} is {view.Status}{(view.Stuck ? " (still stuck)" : "")}.");
        }, ct));

        var reason = new Option<string?>("--reason") { Description = "Why (kept in the audit trail)" };
        var abort = new Command("abort", "Abort a transaction that has not passed its pivot (compensates what was applied)") { gid, reason };
        abort.SetAction((parse, ct) => RunAsync(parse, parse.GetValue(server)!, async (client, console, _) =>
        {
            var view = await client.AbortAsync(parse.GetValue(gid)!, parse.GetValue(reason), ct);
            return Print(parse, console, view, $"Abort accepted: {view.Gid} is {view.Status}.");
        }, ct));

        var instances = new Command("instances", "The coordinator instances holding unfinished transactions, and whether their leases ran out");
        instances.SetAction((parse, ct) => RunAsync(parse, parse.GetValue(server)!, (client, console, _) => parse.GetValue(output) == OutputFormat.Json
            ? InstancesJsonAsync(client, parse.InvocationConfiguration.Output, ct)
            : InstancesAsync(client, console, ct), ct));

        tx.Subcommands.Add(list);
        tx.Subcommands.Add(show);
        tx.Subcommands.Add(retry);
        tx.Subcommands.Add(abort);
        tx.Subcommands.Add(instances);
        return tx;

        int Print(ParseResult parse, IAnsiConsole console, TransactionView view, string text)
        {
            if (parse.GetValue(output) == OutputFormat.Json)
            {
                CliConsole.WriteJson(parse.InvocationConfiguration.Output, JsonSerializer.SerializeToNode(view, TreatyJsonContext.Default.TransactionView)!);
            }
            else
            {
                console.WriteLine(text);
            }

            return 0;
        }
    }

    /// <summary>The key flag of every <c>tx</c> command.</summary>
    internal const string ApiKeyOption = "--api-key";

    /// <summary>The environment variable read when <c>--api-key</c> is not given.</summary>
    internal const string ApiKeyVariable = "TREATY_API_KEY";

    /// <summary>Runs <paramref name="action"/> with a client and the output console; failures go to standard error.</summary>
    private static async Task<int> RunAsync(ParseResult parse, string server, Func<TreatyClient, IAnsiConsole, IAnsiConsole, Task<int>> action, CancellationToken cancellationToken)
    {
        var error = CliConsole.Error(parse);
        if (!Uri.TryCreate(server, UriKind.Absolute, out var uri))
        {
            error.MarkupLineInterpolated($"[red]--server[/]: '{server}' is not an absolute URL.");
            return CliConsole.UsageError;
        }

        var flag = parse.GetValue<string?>(ApiKeyOption) is { Length: > 0 } given ? given : null;
        var apiKey = flag ?? (Environment.GetEnvironmentVariable(ApiKeyVariable) is { Length: > 0 } variable ? variable : null);
        using var client = new TreatyClient(uri, apiKey);
        try
        {
            return await action(client, CliConsole.Out(parse), error);
        }
        catch (TreatyApiException ex)
        {
            error.MarkupLineInterpolated($"[red]{ex.StatusCode} {ex.Title}[/]: {ex.Detail}");
            // The problem speaks HTTP (Authorization: Bearer); say it in the CLI's terms, naming where the key came from, never the key.
            if (ex.StatusCode == 401 && apiKey is null)
            {
                error.MarkupLineInterpolated($"{server} needs a key: give a client or operator key with {ApiKeyOption} or {ApiKeyVariable}.");
            }
            else if (ex.StatusCode == 401)
            {
                error.MarkupLineInterpolated($"{server} refused the key given with {(flag is null ? ApiKeyVariable : ApiKeyOption)}.");
            }

            return CliConsole.Failure;
        }
        catch (HttpRequestException ex)
        {
            error.MarkupLineInterpolated($"[red]Cannot reach {server}[/]: {ex.Message}");
            return CliConsole.Failure;
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            error.MarkupLineInterpolated($"[red]{server} did not answer in time[/]");
            return CliConsole.Failure;
        }
    }

    /// <summary><c>tx list -o json</c>: the listing as the API returns it (<c>items</c>, <c>nextCursor</c>).</summary>
    public static async Task<int> ListJsonAsync(TreatyClient client, bool stuckOnly, TextWriter output, CancellationToken cancellationToken, string? status = null, int limit = 50)
    {
        var page = await client.ListAsync(new TransactionListQuery { Stuck = stuckOnly ? true : null, Status = status, Limit = limit }, cancellationToken);
        CliConsole.WriteJson(output, JsonSerializer.SerializeToNode(page, TreatyJsonContext.Default.TransactionListView)!);
        return 0;
    }

    /// <summary><c>tx show -o json</c>: the transaction as the API returns it, with its timeline under <c>events</c>.</summary>
    public static async Task<int> ShowJsonAsync(TreatyClient client, string gid, TextWriter output, IAnsiConsole error, CancellationToken cancellationToken)
    {
        var view = await client.GetAsync(gid, cancellationToken);
        if (view is null)
        {
            return NoSuchTransaction(error, gid);
        }

        var events = await client.GetEventsAsync(gid, cancellationToken);
        var json = JsonSerializer.SerializeToNode(view, TreatyJsonContext.Default.TransactionView)!.AsObject();
        json["events"] = JsonSerializer.SerializeToNode(events, TreatyJsonContext.Default.EventListView)!["events"]!.DeepClone();
        CliConsole.WriteJson(output, json);
        return 0;
    }

    public static async Task<int> ListAsync(TreatyClient client, bool stuckOnly, IAnsiConsole console, CancellationToken cancellationToken, string? status = null, int limit = 50)
    {
        var page = await client.ListAsync(new TransactionListQuery { Stuck = stuckOnly ? true : null, Status = status, Limit = limit }, cancellationToken);
        var table = new Table().Border(TableBorder.Simple);
        foreach (var column in new[] { "gid", "protocol", "status", "phase", "stuck", "branches", "updated", "reason" })
        {
            // An id is copied and pasted: never wrapped, whatever the width.
            table.AddColumn(new TableColumn(column) { NoWrap = column is "gid" or "updated" });
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

    /// <summary><c>tx instances</c>: who holds unfinished transactions; an instance whose leases ran
    /// out is marked, with what happens to its transactions.</summary>
    public static async Task<int> InstancesAsync(TreatyClient client, IAnsiConsole console, CancellationToken cancellationToken)
    {
        var view = await client.ListInstancesAsync(cancellationToken);
        var table = new Table().Border(TableBorder.Simple);
        table.AddColumn(new TableColumn("instance") { NoWrap = true });
        table.AddColumn(new TableColumn("held").RightAligned());
        table.AddColumn(new TableColumn("lease until") { NoWrap = true });
        table.AddColumn("lease");
        foreach (var instance in view.Instances)
        {
            table.AddRow(
                Markup.Escape(instance.Instance) + (instance.Instance == view.Self ? " [grey](this one)[/]" : ""),
                instance.Held.ToString(System.Globalization.CultureInfo.InvariantCulture),
                instance.LeaseUntil.ToString("u", System.Globalization.CultureInfo.InvariantCulture),
                instance.Expired ? "[red]expired[/]" : "[green]live[/]");
        }

        console.Write(table);
        var expired = view.Instances.Count(i => i.Expired);
        console.MarkupLineInterpolated($"{view.Instances.Count} instance(s) hold unfinished transactions; {view.Self} answered.");
        if (expired > 0)
        {
            console.MarkupLineInterpolated($"[red]{expired} stopped renewing[/]: the others take their transactions over as they come due.");
        }

        return 0;
    }

    /// <summary><c>tx instances -o json</c>: as the API returns it (<c>self</c>, <c>instances</c>).</summary>
    public static async Task<int> InstancesJsonAsync(TreatyClient client, TextWriter output, CancellationToken cancellationToken)
    {
        var view = await client.ListInstancesAsync(cancellationToken);
        CliConsole.WriteJson(output, JsonSerializer.SerializeToNode(view, TreatyJsonContext.Default.InstanceListView)!);
        return 0;
    }

    // error: where "no such transaction" goes; null: the console itself.
    public static async Task<int> ShowAsync(TreatyClient client, string gid, IAnsiConsole console, CancellationToken cancellationToken, IAnsiConsole? error = null)
    {
        var view = await client.GetAsync(gid, cancellationToken);
        if (view is null)
        {
            return NoSuchTransaction(error ?? console, gid);
        }

        console.MarkupLine($"[bold]{Markup.Escape(view.Gid)}[/] {view.Protocol} {Colour(view.Status)}{(view.Stuck ? " [red](stuck)[/]" : "")}");
        console.MarkupLineInterpolated($"phase: {view.Phase ?? "-"}   decision: {view.Decision ?? "undecided"}");
        if (view.Reason is not null)
        {
            console.MarkupLineInterpolated($"reason: {view.Reason}");
        }

        if (view.StuckOn is { } waiting && view.Protocol == Core.Model.ProtocolNames.Choreography)
        {
            // Nobody is called: the saga waits for an event that did not come.
            console.MarkupLineInterpolated($"[red]stuck[/] after {waiting.Attempts} events, last from {waiting.Branch ?? "-"}: {waiting.LastError}");
        }
        else if (view.StuckOn is { } stuck)
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

    // A failure, not a usage error: the gid may well exist on another coordinator.
    private static int NoSuchTransaction(IAnsiConsole error, string gid)
    {
        error.MarkupLineInterpolated($"[red]No transaction {gid}[/]");
        return CliConsole.Failure;
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
