using System.CommandLine;
using Spectre.Console;

namespace Treaty.Cli;

/// <summary><c>treaty demo</c>: the Shop end to end, with invariant checks.</summary>
internal static class DemoCommand
{
    public static Command Create()
    {
        var keep = new Option<bool>("--keep") { Description = "Leave the coordinator and the Shop running afterwards and print their URLs" };
        var dataDir = new Option<string?>("--data-dir") { Description = "Where the databases go (default: a new temp directory, deleted afterwards)" };
        var command = new Command("demo", "Start the coordinator and the Shop (Order, Payment, Inventory) and run the checkout scenarios") { keep, dataDir };
        command.SetAction((parse, cancellationToken) => RunAsync(parse.GetValue(keep), parse.GetValue(dataDir), AnsiConsole.Console, cancellationToken));
        return command;
    }

    public static async Task<int> RunAsync(bool keep, string? dataDir, IAnsiConsole console, CancellationToken cancellationToken)
    {
        console.MarkupLine("[bold]Treaty demo[/]: a coordinator and three Shop services, each its own process, database and port.");
        DemoEnvironment env;
        try
        {
            env = await console.Status().StartAsync("Starting the coordinator and the Shop services…",
                _ => DemoEnvironment.StartAsync(dataDir, cancellationToken));
        }
        catch (Exception ex) when (ex is InvalidOperationException or TimeoutException or FileNotFoundException or HttpRequestException
            || (ex is OperationCanceledException && !cancellationToken.IsCancellationRequested))
        {
            console.MarkupLineInterpolated($"[red]Could not start the demo:[/] {ex.Message}");
            return 1;
        }

        await using (env)
        {
            foreach (var process in env.Processes)
            {
                console.MarkupLineInterpolated($"  {process.Name,-12} pid {process.Id}");
            }

            using var client = new Treaty.Client.TreatyClient(new Uri(env.CoordinatorUrl));
            var scenarios = new DemoScenarios(
                env,
                showStuck: async _ =>
                {
                    console.MarkupLine("[grey]$ treaty tx list --stuck[/]");
                    await TxCommands.ListAsync(client, stuckOnly: true, console, cancellationToken);
                },
                retry: async gid =>
                {
                    console.MarkupLineInterpolated($"[grey]$ treaty tx retry {gid}[/]");
                    await TxCommands.RetryAsync(client, gid, console, cancellationToken);
                });
            var results = new List<ScenarioResult>();
            foreach (var (name, run) in scenarios.All())
            {
                ScenarioResult result;
                try
                {
                    result = await console.Status().StartAsync($"Running: {name}…", _ => run(cancellationToken));
                }
                catch (Exception ex) when (ex is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
                {
                    result = new ScenarioResult(name, "error", TimeSpan.Zero, [new Check("scenario ran", false, ex.Message)], null);
                }

                results.Add(result);
                console.MarkupLine((result.Passed ? "[green]✓[/] " : "[red]✗[/] ") + Markup.Escape($"{name}: {result.Outcome} in {result.Duration.TotalMilliseconds:0} ms"));
                if (name == "participant 503 twice" && result.Gid is not null)
                {
                    console.MarkupLineInterpolated($"[grey]$ treaty tx show {result.Gid}[/]");
                    await TxCommands.ShowAsync(client, result.Gid, console, cancellationToken);
                }
            }

            console.Write(Table(results));
            var passed = results.All(r => r.Passed);
            console.MarkupLine(passed ? "[green bold]Every invariant held.[/]" : "[red bold]Some invariants failed (see above).[/]");
            if (keep)
            {
                console.MarkupLine("Still running (Ctrl+C to stop):");
                console.MarkupLineInterpolated($"  coordinator {env.CoordinatorUrl}  (API {env.CoordinatorUrl}/api/v1/transactions, OpenAPI {env.CoordinatorUrl}/openapi/v1.json)");
                console.MarkupLineInterpolated($"  order       {env.OrderUrl}");
                console.MarkupLineInterpolated($"  payment     {env.PaymentUrl}");
                console.MarkupLineInterpolated($"  inventory   {env.InventoryUrl}");
                console.MarkupLineInterpolated($"  data        {env.Root}");
                try
                {
                    await Task.Delay(Timeout.InfiniteTimeSpan, TimeProvider.System, cancellationToken);
                }
                catch (OperationCanceledException)
                {
                    // Ctrl+C
                }
            }

            return passed ? 0 : 1;
        }
    }

    private static Table Table(IReadOnlyList<ScenarioResult> results)
    {
        var table = new Table().Border(TableBorder.Rounded).Title("Scenarios");
        table.AddColumn("scenario");
        table.AddColumn("outcome");
        table.AddColumn(new TableColumn("duration").RightAligned());
        table.AddColumn("invariant checks");
        foreach (var result in results)
        {
            var failed = result.Checks.Where(c => !c.Passed).ToList();
            var checks = failed.Count == 0
                ? $"[green]{result.Checks.Count}/{result.Checks.Count} passed[/]"
                : $"[red]{result.Checks.Count - failed.Count}/{result.Checks.Count} passed[/]\n" + string.Join("\n", failed.Select(f => Markup.Escape($"✗ {f.What}: {f.Detail}")));
            table.AddRow(
                Markup.Escape(result.Name),
                Markup.Escape(result.Outcome),
                $"{result.Duration.TotalMilliseconds:0} ms",
                checks);
        }

        return table;
    }
}
