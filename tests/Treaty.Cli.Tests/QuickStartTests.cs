using System.Diagnostics;
using System.Text.RegularExpressions;
using Treaty.Cli;
using Treaty.Cli.Tests.Support;
using Treaty.Testing;

namespace Treaty.Cli.Tests;

/// <summary>The README's C# example is samples/QuickStart, word for word, and it runs.</summary>
public sealed partial class QuickStartTests
{
    private const string Begin = "// <quickstart>";
    private const string End = "// </quickstart>";
    private const string ReadmeMarker = "<!-- quickstart:";

    [Fact]
    public void Readme_CSharpExample_IsTheSampleRegionVerbatim()
    {
        var root = WorkingDirectoryTests.RepositoryRoot();
        var program = Lines(File.ReadAllText(Path.Combine(root, "samples", "QuickStart", "Program.cs")));
        var begin = program.IndexOf(Begin);
        var end = program.IndexOf(End);
        begin.ShouldBeGreaterThanOrEqualTo(0, "no " + Begin + " in the sample");
        end.ShouldBeGreaterThan(begin, "no " + End + " after " + Begin);
        var region = string.Join('\n', program[(begin + 1)..end]);

        var readme = File.ReadAllText(Path.Combine(root, "README.md")).ReplaceLineEndings("\n");
        var marker = readme.IndexOf(ReadmeMarker, StringComparison.Ordinal);
        marker.ShouldBeGreaterThanOrEqualTo(0, "no " + ReadmeMarker + " in the README");
        var block = CSharpBlock().Match(readme, marker);
        block.Success.ShouldBeTrue("no ```csharp block after the marker");

        block.Groups["code"].Value.ShouldBe(region);
    }

    [Fact]
    public async Task QuickStart_AgainstACoordinator_CommitsWithAFreshGidEachRun()
    {
        await using var coordinator = await InProcessCoordinator.StartAsync(prefix: "treaty-quickstart");
        await using var participant = await TinyParticipant.StartAsync();
        var server = coordinator.BaseAddress.AbsoluteUri.TrimEnd('/');

        var first = await RunAsync(server, participant.Url + "/ok", participant.Url + "/ok");
        var second = await RunAsync(server, participant.Url + "/ok", participant.Url + "/ok");

        first.ExitCode.ShouldBe(0, first.Output);
        second.ExitCode.ShouldBe(0, second.Output);
        var gids = new[] { first, second }.Select(run => OutputLine().Match(run.Output)).ToList();
        gids.ShouldAllBe(m => m.Success);
        gids[0].Groups["gid"].Value.ShouldNotBe(gids[1].Groups["gid"].Value);
        foreach (var gid in gids.Select(m => m.Groups["gid"].Value))
        {
            var view = (await coordinator.Client.GetAsync(gid)).ShouldNotBeNull();
            view.Status.ShouldBe("committed");
            view.Branches.Select(b => b.Name).ShouldBe(["payment", "inventory"]);
        }

        participant.Calls.ShouldBe(4); // payment and inventory, twice
    }

    [Fact]
    public async Task QuickStart_InventoryDeclines_PaymentCompensatedAndSaid()
    {
        await using var coordinator = await InProcessCoordinator.StartAsync(prefix: "treaty-quickstart");
        await using var participant = await TinyParticipant.StartAsync();

        var run = await RunAsync(coordinator.BaseAddress.AbsoluteUri.TrimEnd('/'), participant.Url + "/ok", participant.Url + "/no");

        run.ExitCode.ShouldBe(1, run.Output);
        run.Output.ShouldMatch(@"order-o-[0-9a-f]{32}: aborted");
    }

    private static async Task<(int ExitCode, string Output)> RunAsync(params string[] args)
    {
        var info = new ProcessStartInfo(ChildProcess.DotnetHost())
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        info.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "QuickStart.dll"));
        foreach (var arg in args)
        {
            info.ArgumentList.Add(arg);
        }

        using var process = Process.Start(info)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var limit = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await process.WaitForExitAsync(limit.Token);
        return (process.ExitCode, await stdout + await stderr);
    }

    private static List<string> Lines(string text) => [.. text.ReplaceLineEndings("\n").Split('\n')];

    [GeneratedRegex(@"```csharp\n(?<code>.*?)\n```", RegexOptions.Singleline)]
    private static partial Regex CSharpBlock();

    [GeneratedRegex(@"(?<gid>order-o-[0-9a-f]{32}): committed")]
    private static partial Regex OutputLine();
}
